"""Shared fixtures: isolated data dirs, the installed embedding model, small corpora we wrote ourselves."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


@pytest.fixture
def anyio_backend():
    return "asyncio"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(module: str, env: dict[str, str], *, stderr: list[str] | None = None) -> Iterator[str]:
    """Run ``python -m <module> --http --port N`` as a subprocess; yield its MCP URL once it accepts
    connections; terminate it afterwards. ``stderr``, when given, receives the server's stderr once it has
    exited (so what it writes at exit, e.g. spans, can be read)."""
    import socket
    import subprocess
    import sys
    import time

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, "--http", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"{module} did not start over HTTP: "
                                         f"{proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
        if stderr is not None:
            stderr.append(err.decode(errors="replace"))
