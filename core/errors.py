"""Errors shared by every guardrag library and server.

Each error carries a stable machine-readable ``code`` and a message a person
can act on. Servers turn them into MCP tool errors; the CLI prints them.
"""

from __future__ import annotations

from typing import Any


class GuardragError(Exception):
    """Base class: an anticipated failure with an actionable message."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(GuardragError):
    """The caller's input is wrong; nothing was changed."""

    code = "invalid_input"


class NotFound(GuardragError):
    """A named collection, document or chunk does not exist."""

    code = "not_found"


class Conflict(GuardragError):
    """The operation clashes with the current state (e.g. a concurrent write)."""

    code = "conflict"


class Unavailable(GuardragError):
    """A dependency (model files, Chroma server) is missing or unreachable."""

    code = "unavailable"


def find_guardrag_error(exc: BaseException) -> GuardragError | None:
    """The first GuardragError in ``exc``, looking inside exception groups (anyio task groups wrap errors)."""
    if isinstance(exc, GuardragError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_guardrag_error(inner)
            if found is not None:
                return found
    return None
