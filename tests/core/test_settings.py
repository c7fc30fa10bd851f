"""Settings: defaults, GUARDRAG_* variables (nested with __), and the optional TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    import os

    for key in list(os.environ):
        if key.startswith("GUARDRAG_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("GUARDRAG_CONFIG", str(tmp_path / "guardrag.toml"))
    return tmp_path


def test_defaults_need_no_file_and_no_variable(clean_env):
    s = Settings()
    assert s.data_dir.name == "guardrag" and s.chroma_url is None
    assert s.chroma_path == s.data_dir / "chroma"
    assert s.retrieval.collection == "default" and s.retrieval.chunk_tokens == 256
    assert s.retrieval.allowed_roots() == [Path.cwd().resolve()]


def test_toml_file_then_environment_wins(clean_env, monkeypatch):
    (clean_env / "guardrag.toml").write_text(
        'data_dir = "/srv/g"\nchroma_url = "http://127.0.0.1:8000"\n[retrieval]\nrrf_k = 30\nroots = ["/srv/docs"]\n'
    )
    s = Settings()
    assert s.data_dir == Path("/srv/g") and s.chroma_url == "http://127.0.0.1:8000"
    assert s.retrieval.rrf_k == 30 and s.retrieval.roots == [Path("/srv/docs")]
    monkeypatch.setenv("GUARDRAG_RETRIEVAL__RRF_K", "90")
    monkeypatch.setenv("GUARDRAG_DATA_DIR", str(clean_env / "d"))
    s = Settings()
    assert s.retrieval.rrf_k == 90 and s.data_dir == clean_env / "d"


def test_invalid_values_are_rejected_with_the_field_name(clean_env, monkeypatch):
    monkeypatch.setenv("GUARDRAG_RETRIEVAL__CHUNK_TOKENS", "4096")
    with pytest.raises(ValidationError, match="chunk_tokens"):
        Settings()


def test_filesystem_root_is_never_an_implicit_ingest_root(clean_env, monkeypatch):
    monkeypatch.chdir("/")
    assert Settings().retrieval.allowed_roots() == []
    monkeypatch.setenv("GUARDRAG_RETRIEVAL__ROOTS", '["/srv/docs"]')
    assert Settings().retrieval.allowed_roots() == [Path("/srv/docs")]
