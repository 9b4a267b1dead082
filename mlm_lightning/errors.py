"""The one exception type that the command line shows as a plain message instead of a traceback."""


class MLMError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    ``python -m mlm_lightning`` prints it as one line and exits with status 2; set ``MLM_LIGHTNING_DEBUG=1``
    to see the traceback as well.
    """

    exit_code = 2


class Terminated(MLMError):
    """The run was stopped by ``SIGTERM`` (pre-emption, eviction, ``kill``): exit status 143 (128 + 15).

    The message says where the last checkpoint was saved; ``python -m mlm_lightning`` prints it as one line.
    """

    exit_code = 143


def first_line(err: BaseException) -> str:
    """The first line of a library's error: transformers' offline message runs over several lines and a URL."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
