"""The one exception type for a user's mistake (a wrong argument, a missing or broken file,
a folder that cannot be used). The ``mlrb`` command prints such an error as one line,
``mlrb COMMAND: error: ...``, and exits with status 1; a traceback is left for bugs."""
from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (argument, file, folder), not with mlrb.

    The message must name the file or argument and say what is wrong with it.
    """


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line. An error re-raised from a DataLoader worker carries
    the worker's traceback in its message; its last line is the original message."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name = type(exc).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return " ".join(text.split("\n")) if text else type(exc).__name__
