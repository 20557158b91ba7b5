"""The error type for mistakes a user can fix: a bad option value, file or record.

The library raises :class:`UserInputError` for those; the command line prints it as
one line (``prefkit: error: ...``, exit status 2) and lets any other exception show
its traceback, so a bug is never mistaken for bad input. It is a ``ValueError``, so
code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["UserInputError"]


class UserInputError(ValueError):
    """Bad input that the user can fix; the message says what was found and what to do."""
