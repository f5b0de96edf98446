"""User errors versus bugs.

An :class:`EdgeqError` is a problem with what the user asked for (a missing file, a bad option):
the CLI prints its one-line message and exits with code 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class EdgeqError(Exception):
    """A user-facing error: says what is wrong and what to do about it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
