"""`UserError`: a problem with the user's input, shown as one line (per problem) without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Message lines name the file and the problem; the CLI prints them and exits with `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
