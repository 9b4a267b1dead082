"""The one exception type that the command line shows as a plain message instead of a traceback."""


class MLMError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    ``python -m mlm_lightning`` prints it as one line and exits with status 2; set ``MLM_LIGHTNING_DEBUG=1``
    to see the traceback as well.
    """
