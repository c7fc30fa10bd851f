"""guardrag's shared kernel: settings, errors, embeddings, offline switches. No MCP here."""

from core import offline as _offline  # noqa: F401  (sets the no-phone-home defaults first)
from core.errors import Conflict, GuardragError, InvalidInput, NotFound, Unavailable
from core.settings import Settings, get_settings

__all__ = ["Conflict", "GuardragError", "InvalidInput", "NotFound", "Settings", "Unavailable", "get_settings"]
