"""Tests of the offline embedder (core.embedder) and model provisioning (core.models).

The model must have been installed (``guardrag models install``) before these
run; if it is not, every test that needs it fails with ModelNotInstalledError.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from core.embedder import MAX_TOKENS, Embedder, get_embedder
from core.models import (
    MODEL_FILES,
    MODEL_ID,
    QUANTIZED_FILE,
    ModelInstallError,
    ModelNotInstalledError,
    default_model_dir,
    find_model,
    install_model,
    model_files_dir,
    model_status,
    quantize_model,
)

LONG = " ".join(f"Section {i} explains how guarded retrieval keeps injected instructions out." for i in range(40))
TEXTS = [
    "cat",
    "",
    "A cat sits on the mat",
    "Héllo wörld — naïve café, 東京 and emoji 🚀!",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn, "
    "while the farmer counts sheep and the baker opens his shop. " * 3,
    LONG,  # well over 256 tokens: truncated
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> Embedder:
    return get_embedder(model_dir)  # raises ModelNotInstalledError if missing


@pytest.fixture()
def chroma_ef(embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Chroma's default embedding function, loading our files, forbidden to download."""
    from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

    folder = tmp_path / "chroma" / MODEL_ID / "onnx"
    folder.mkdir(parents=True)
    for name in MODEL_FILES:  # the files Chroma's existence check looks for
        (folder / name).symlink_to(embedder.path / name)
    monkeypatch.setattr(ONNXMiniLM_L6_V2, "DOWNLOAD_PATH", folder.parent)

    def no_download(*args, **kwargs):
        raise AssertionError("Chroma tried to download the model")

    monkeypatch.setattr(ONNXMiniLM_L6_V2, "_download", no_download)
    return ONNXMiniLM_L6_V2()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_texts_span_short_to_truncated(embedder: Embedder) -> None:
    counts = [embedder.count_tokens(t) for t in TEXTS]
    assert min(counts) <= 1 and max(counts) > MAX_TOKENS


def test_same_vectors_as_chroma_default_function(embedder: Embedder, chroma_ef) -> None:
    ours = embedder.embed(TEXTS)
    theirs = np.asarray(chroma_ef(TEXTS), dtype=np.float32)
    assert theirs.shape == ours.shape == (len(TEXTS), 384)
    assert np.all(_cos(ours, theirs) >= 0.9999), _cos(ours, theirs)
    for text, row in zip(TEXTS, ours):
        one = np.asarray(chroma_ef([text])[0])
        assert _cos(embedder.embed_one(text), one) >= 0.9999, text[:40]
        assert _cos(row, one) >= 0.9999, text[:40]


def test_batch_equals_single(embedder: Embedder, model_dir: Path) -> None:
    batch = embedder.embed(TEXTS)
    singles = np.stack([embedder.embed_one(t) for t in TEXTS])
    assert np.all(_cos(batch, singles) >= 0.99999)
    small_batches = Embedder(model_dir, batch_size=2, threads=1).embed(TEXTS)
    assert np.all(_cos(batch, small_batches) >= 0.99999)


def test_shape_dtype_norm_and_empty(embedder: Embedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), embedder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one = embedder.embed_one("hello")
    assert one.shape == (384,) and one.dtype == np.float32
    empty = embedder.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    with pytest.raises(TypeError):
        embedder.embed("not a list")  # type: ignore[arg-type]


def test_semantic_sanity(embedder: Embedder) -> None:
    cat, kitten, revenue = embedder.embed(
        ["A cat sits on the mat", "A kitten is sitting on a rug", "Quarterly revenue rose 5%"]
    )
    assert float(cat @ kitten) > float(cat @ revenue) + 0.2


def test_concurrent_embed_is_consistent(embedder: Embedder) -> None:
    texts = [t for t in TEXTS if t is not LONG]  # short inputs keep this test fast
    expected = embedder.embed(texts)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(embedder.embed(texts))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for got in results:
        assert np.all(_cos(got, expected) >= 0.99999)


def test_tokenizer_and_count_tokens(embedder: Embedder) -> None:
    assert embedder.count_tokens("") == 0
    assert embedder.count_tokens("Hello world") == 2
    long_count = embedder.count_tokens(LONG)
    assert long_count > MAX_TOKENS
    # the public tokenizer neither truncates nor pads (2 special tokens added)
    assert len(embedder.tokenizer.encode(LONG).ids) == long_count + 2
    assert len(embedder.tokenizer.encode("Hello world").ids) == 4


def test_model_identity(embedder: Embedder, model_dir: Path) -> None:
    assert embedder.model_id == MODEL_ID == "all-MiniLM-L6-v2"
    status = model_status(model_dir)
    assert status.installed and status.path == embedder.path
    assert embedder.model_sha256 == status.onnx_sha256 and len(embedder.model_sha256) == 64
    assert get_embedder(model_dir) is embedder


@pytest.fixture()
def no_chroma_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_status_on_empty_dir(tmp_path: Path, no_chroma_cache: Path) -> None:
    empty = tmp_path / "models"
    assert find_model(empty) is None
    status = model_status(empty)
    assert not status.installed and status.location is None and status.onnx_sha256 is None
    assert status.path == model_files_dir(empty) == empty / MODEL_ID / "onnx"
    assert status.files_present == [] and sorted(status.files_missing) == sorted(MODEL_FILES)


def test_not_installed_error_message(tmp_path: Path, no_chroma_cache: Path) -> None:
    with pytest.raises(ModelNotInstalledError) as info:
        Embedder(tmp_path / "models")
    message = str(info.value)
    assert "guardrag models install" in message and "model.onnx" in message
    assert info.value.code == "model_not_installed"


def test_find_model_falls_back_to_chroma_cache(tmp_path: Path, no_chroma_cache: Path) -> None:
    cache = no_chroma_cache / ".cache" / "chroma" / "onnx_models" / MODEL_ID / "onnx"
    cache.mkdir(parents=True)
    (cache / "model.onnx").write_bytes(b"x")
    assert find_model(tmp_path / "models") is None  # tokenizer.json still missing
    (cache / "tokenizer.json").write_text("{}")
    assert find_model(tmp_path / "models") == cache
    assert model_status(tmp_path / "models").location == "chroma_cache"


def test_install_copies_from_chroma_cache(
    embedder: Embedder, tmp_path: Path, no_chroma_cache: Path
) -> None:
    cache = no_chroma_cache / ".cache" / "chroma" / "onnx_models" / MODEL_ID / "onnx"
    cache.mkdir(parents=True)
    for name in MODEL_FILES:
        (cache / name).symlink_to(embedder.path / name)
    target_dir = tmp_path / "models"
    lines: list[str] = []
    path = install_model(target_dir, allow_download=False, log=lines.append)
    assert path == model_files_dir(target_dir) and not path.is_symlink()
    status = model_status(target_dir)
    assert status.installed and status.location == "model_dir" and status.source == "chroma-cache-copy"
    assert status.onnx_sha256 == embedder.model_sha256 and status.files_missing == []
    manifest = json.loads((path / "guardrag-model.json").read_text())
    assert manifest["sha256"]["model.onnx"] == embedder.model_sha256
    # the install quantized the copy (deterministically: the same file as the installed one)
    assert status.quantized and manifest["quantized"]["per_channel"] is True
    assert manifest["sha256"][QUANTIZED_FILE] == get_embedder(default_model_dir(), quantized=True).model_sha256
    assert [p.name for p in path.parent.iterdir()] == ["onnx"]  # no staging leftovers
    # already in place: nothing to do
    assert install_model(target_dir, allow_download=False, log=lines.append) == path
    assert "already installed" in lines[-1]
    np.testing.assert_allclose(Embedder(target_dir).embed_one("cat"), embedder.embed_one("cat"), atol=1e-6)


def test_weights_with_wrong_checksum_are_refused(tmp_path: Path) -> None:
    from core import models

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not the weights")
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    with pytest.raises(ModelInstallError, match="refusing"):
        models._verify_weights({"model.safetensors": bad, "tokenizer.json": tok})


# --------------------------------------------------------------------------- the int8 copy


def test_quantized_model_is_installed_and_close_to_the_float_one(embedder: Embedder, model_dir: Path) -> None:
    q = get_embedder(model_dir, quantized=True)
    assert q is not embedder and q.quantized and q.onnx_file.name == QUANTIZED_FILE
    assert model_status(model_dir).quantized
    assert q.model_sha256 != embedder.model_sha256
    texts = [t for t in TEXTS if t]
    a, b = embedder.embed(texts), q.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cos = _cos(a, b)
    assert np.all(cos >= 0.97) and np.all(cos < 0.99999)  # close, and really another model
    cat, kitten, revenue = q.embed(["A cat sits on the mat", "A kitten is sitting on a rug", "Quarterly revenue rose 5%"])
    assert float(cat @ kitten) > float(cat @ revenue) + 0.2


def _float_only_copy(embedder: Embedder, model_dir: Path) -> Path:
    folder = model_files_dir(model_dir)
    folder.mkdir(parents=True)
    for name in MODEL_FILES:
        (folder / name).symlink_to(embedder.path / name)
    return folder


def test_missing_quantized_model_is_a_clear_error(embedder: Embedder, tmp_path: Path, no_chroma_cache: Path) -> None:
    _float_only_copy(embedder, tmp_path / "models")
    assert not model_status(tmp_path / "models").quantized
    Embedder(tmp_path / "models")  # the float model is there
    with pytest.raises(ModelNotInstalledError, match=QUANTIZED_FILE) as info:
        Embedder(tmp_path / "models", quantized=True)
    assert "guardrag models install" in str(info.value)


def test_quantize_refuses_a_model_that_drifts(embedder: Embedder, tmp_path: Path, no_chroma_cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from core import models

    folder = _float_only_copy(embedder, tmp_path / "models")
    monkeypatch.setattr(models, "QUANTIZED_MIN_COSINE", 0.99999)  # int8 never gets this close
    with pytest.raises(ModelInstallError, match="drifts"):
        quantize_model(tmp_path / "models", log=lambda _: None)
    assert not (folder / QUANTIZED_FILE).exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["onnx"]  # no temporary files left
