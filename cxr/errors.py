"""The one exception type a user sees: a clear message, no traceback."""

from __future__ import annotations

__all__ = ["CXRError"]


class CXRError(Exception):
    """A problem with the user's input (data, flags, checkpoint) explained in plain words.

    Command-line entry points catch it, print the message and exit with status 2, before
    anything is written to the output folder.
    """
