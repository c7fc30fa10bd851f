"""Small checks and helpers shared by the engines: input validation with actionable messages, paging
cursors, and making a rename durable. No MCP."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from core.errors import InvalidInput

__all__ = ["check_collection_name", "check_metadata", "check_text", "decode_cursor", "encode_cursor", "fsync_dir"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_CURSOR_RE = re.compile(r"o\d{1,6}")


def check_text(value: str, what: str) -> str:
    """Reject NUL bytes and blank strings with a message naming the field."""
    if "\x00" in value:
        raise InvalidInput(f"{what} contains NUL bytes (\\x00); remove them and retry.")
    if not value.strip():
        raise InvalidInput(f"{what} is empty; give some text.")
    return value


def check_collection_name(name: str) -> str:
    """A name Chroma accepts for a collection (and safe as a file name)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(
            f"invalid collection name {name!r}: use 3-512 characters from letters, digits, '.', '_' and '-', "
            "starting and ending with a letter or digit."
        )
    return name


def check_metadata(metadata: dict[str, Any] | None, reserved: Collection[str] = ()) -> dict[str, Any]:
    """Validate caller metadata: flat, scalar values, none of the ``reserved`` keys."""
    if not metadata:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be an object of key -> string/number/boolean.")
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise InvalidInput(f"metadata key {key!r} is invalid: use letters, digits, '_', '.', '-' (max 64).")
        if key in reserved:
            raise InvalidInput(f"metadata key {key!r} is reserved by guardrag; reserved keys: {sorted(reserved)}.")
        if isinstance(value, str):
            if "\x00" in value:
                raise InvalidInput(f"metadata[{key!r}] contains NUL bytes.")
        elif isinstance(value, bool | int):
            pass
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(f"metadata[{key!r}] must be a finite number.")
        else:
            raise InvalidInput(f"metadata[{key!r}] must be a string, number or boolean, not {type(value).__name__}.")
        out[key] = value
    return out


def encode_cursor(offset: int) -> str:
    """The opaque cursor of the page that starts at ``offset``."""
    return f"o{offset}"


def decode_cursor(cursor: str | None) -> int:
    """The offset a cursor from :func:`encode_cursor` stands for (0 for none)."""
    if cursor in (None, ""):
        return 0
    if not isinstance(cursor, str) or not _CURSOR_RE.fullmatch(cursor):
        raise InvalidInput(f"invalid cursor {str(cursor)[:40]!r}: pass the next_cursor value of a previous result.")
    return int(cursor[1:])


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (matters after a power loss, not a kill)."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
