"""Judge rubrics: versioned TOML files shipped in the package, loaded with their SHA-256.

A rubric holds what the judge needs for one question: its id and declared version,
the prompt an LLM judge gets, and the offline judge's weights and thresholds with how
they were calibrated. Every result names its rubric as ``id@version+sha8``: editing a
file changes that tag even if nobody bumps the version.
"""

from __future__ import annotations

import hashlib
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from core.errors import NotFound

RUBRIC_DIR = Path(__file__).resolve().parent / "rubrics"
RUBRICS = ("faithfulness", "relevance", "context", "safety")


class Rubric(BaseModel):
    id: str
    version: str
    sha256: str = Field(description="SHA-256 of the rubric file's bytes.")
    description: str = ""
    prompt: str = Field("", description="System prompt of the LLM judge.")
    offline: dict[str, Any] = Field(default_factory=dict, description="Weights and thresholds of the offline judge.")
    calibration: dict[str, Any] = Field(default_factory=dict, description="How the thresholds were chosen.")
    path: str = ""

    @property
    def tag(self) -> str:
        """``id@version+sha8``: changes whenever the file does."""
        return f"{self.id}@{self.version}+{self.sha256[:8]}"


def load_rubric(name: str, directory: Path | None = None) -> Rubric:
    """Load ``<directory>/<name>.toml`` (default: the packaged rubrics)."""
    path = (directory or RUBRIC_DIR) / f"{name}.toml"
    return _load(path, path.stat().st_mtime_ns if path.exists() else 0)


@lru_cache(maxsize=32)
def _load(path: Path, _mtime: int) -> Rubric:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"rubric file {path} does not exist") from None
    data = tomllib.loads(raw.decode("utf-8"))
    return Rubric(id=data["id"], version=str(data["version"]), sha256=hashlib.sha256(raw).hexdigest(),
                  description=data.get("description", ""), prompt=data.get("prompt", {}).get("system", ""),
                  offline=data.get("offline", {}), calibration=data.get("calibration", {}), path=str(path))
