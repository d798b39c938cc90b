"""The one exception type for a user's mistake (a wrong argument, a missing or broken file,
a folder that cannot be used). The ``mlrb`` command prints such an error as one line,
``mlrb COMMAND: error: ...``, and exits with status 1; a traceback is left for bugs."""
from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (argument, file, folder), not with mlrb.

    The message must name the file or argument and say what is wrong with it.
    """
