"""The one error type the broker's services raise for the API to answer."""

from __future__ import annotations


class ApiError(Exception):
    """An error the API returns as ``{"error": {code, message, hint}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
