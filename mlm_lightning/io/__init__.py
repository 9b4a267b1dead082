"""Files in and out, safely: atomic writes, checkpoint reading (weights-only), run folders, sources (``pkg://``, URLs).

Nothing here knows about models or data: every package above uses it.
"""
