"""Shared fixtures: isolated data dirs, the installed embedding model, small corpora we wrote ourselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import core  # noqa: F401  (offline switches before chromadb / onnxruntime load)
from core.settings import RetrievalSettings, Settings

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The installed model (the setup command installs it; a missing model fails the tests that need it)."""
    from core.models import ModelNotInstalledError, find_model

    path = Settings().model_dir
    if find_model(path) is None:
        raise ModelNotInstalledError(path)
    return path


@pytest.fixture(scope="session")
def embedder(model_dir):
    from core.embedder import get_embedder

    return get_embedder(model_dir)


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    return root


@pytest.fixture
def settings(tmp_path: Path, model_dir: Path, roots: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_dir=model_dir,
                    retrieval=RetrievalSettings(roots=[roots], max_file_mb=1.0))


@pytest.fixture
def engine(settings, embedder):
    from servers.retrieval.engine import RetrievalEngine

    return RetrievalEngine(settings, embedder=embedder)


def server_env(settings: Settings) -> dict[str, str]:
    """Environment that points a server subprocess at the same settings as ``settings``."""
    import json

    env = {k: v for k, v in os.environ.items()}
    env.update({
        "GUARDRAG_DATA_DIR": str(settings.data_dir),
        "GUARDRAG_MODEL_DIR": str(settings.model_dir),
        "GUARDRAG_RETRIEVAL__ROOTS": json.dumps([str(r) for r in settings.retrieval.roots]),
        "GUARDRAG_RETRIEVAL__MAX_FILE_MB": str(settings.retrieval.max_file_mb),
        "GUARDRAG_CONFIG": str(settings.data_dir / "no-such-guardrag.toml"),
    })
    if settings.chroma_url:
        env["GUARDRAG_CHROMA_URL"] = settings.chroma_url
    return env
