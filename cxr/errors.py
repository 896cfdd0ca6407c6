"""The one exception type a user sees: a clear message, no traceback."""

from __future__ import annotations

__all__ = ["CXRError", "first_line"]


class CXRError(Exception):
    """A problem with the user's input (data, flags, checkpoint) explained in plain words.

    Command-line entry points catch it, print the message and exit with status 2, before
    anything is written to the output folder.
    """


def first_line(e: BaseException) -> str:
    """``Type: first non-empty line of the message`` of another library's exception, for a one-sentence error.

    Example:
        >>> first_line(ValueError("bad value\\n  details"))
        'ValueError: bad value'
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
