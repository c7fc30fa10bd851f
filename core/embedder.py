"""Offline sentence embeddings: all-MiniLM-L6-v2 on onnxruntime.

Produces the same vectors as Chroma's default embedding function
(``chromadb.utils.embedding_functions.ONNXMiniLM_L6_V2``): the same tokenizer
(``tokenizer.json``, truncation at 256 tokens), mean pooling over the attention
mask, L2 normalisation, float32. Unlike Chroma's function it keeps one
``InferenceSession`` for its lifetime and pads each batch to its longest input
instead of to 256 tokens, which makes short queries several times faster.

``quantized=True`` runs ``model_int8.onnx`` instead (written by ``guardrag models install``; about 1.5x faster on
one short text, vectors with a cosine of about 0.99 with the float model's): for a caller that compares only vectors
of its own, like the semantic cache.

No torch, transformers or sentence-transformers at run time.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported

import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from core.models import (
    MODEL_ID,
    QUANTIZED_FILE,
    REQUIRED_FILES,
    ModelNotInstalledError,
    find_model,
    model_files_dir,
    sha256_file,
)

__all__ = ["MAX_TOKENS", "Embedder", "get_embedder"]

MAX_TOKENS = 256
"""Inputs are truncated to this many tokens (special tokens included), as in Chroma."""

_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class Embedder:
    """Sentence embedder over one reused onnxruntime session.

    ``model_dir`` is the guardrag model dir (the model is looked up with
    ``core.models.find_model``: our dir first, then Chroma's cache). Raises
    ``ModelNotInstalledError`` if the model files are missing.

    ``quantized`` loads ``model_int8.onnx`` (``ModelNotInstalledError`` when it is missing); ``onnx_file`` loads
    another graph of the same model (used to check a quantised candidate before it is installed).

    Thread-safe: ``embed`` may be called from several threads at once.
    """

    dim: int = 384
    model_id: str = MODEL_ID

    def __init__(self, model_dir: Path, *, threads: int | None = None, batch_size: int = 32,
                 quantized: bool = False, onnx_file: Path | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_dir = Path(model_dir).expanduser()
        folder = find_model(self.model_dir)
        if folder is None:
            ours = model_files_dir(self.model_dir)
            raise ModelNotInstalledError(self.model_dir, [n for n in REQUIRED_FILES if not (ours / n).is_file()])
        self.path: Path = folder
        """Folder holding model.onnx and tokenizer.json."""
        self.onnx_file: Path = onnx_file or folder / (QUANTIZED_FILE if quantized else "model.onnx")
        """The ONNX graph this embedder runs."""
        if not self.onnx_file.is_file():
            raise ModelNotInstalledError(self.model_dir, [self.onnx_file.name])
        self.quantized = quantized
        self.batch_size = batch_size
        self.threads = threads

        self._encoder = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._encoder.enable_truncation(max_length=MAX_TOKENS)
        self._encoder.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(self.onnx_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Embedder(model_id={self.model_id!r}, onnx_file={str(self.onnx_file)!r}, "
                f"batch_size={self.batch_size})")

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer without truncation or padding (for chunking and counting)."""
        return self._tokenizer

    @cached_property
    def model_sha256(self) -> str:
        """SHA-256 of the ONNX file this embedder runs, computed on first access."""
        return sha256_file(self.onnx_file)

    def count_tokens(self, text: str) -> int:
        """Number of word pieces in ``text``, without special tokens and without truncation."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts``: an ``(n, 384)`` float32 array of unit vectors (``(0, 384)`` for none)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings; use embed_one() for one string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) <= self.batch_size:
            return self._embed_batch(texts)
        # Batch texts of similar length together: each batch is padded to its longest text,
        # so sorting by length cuts the padding the model computes over (same vectors, less work).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    def embed_one(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one text: a ``(384,)`` float32 unit vector."""
        return self.embed([text])[0]

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        encoded = self._encoder.encode_batch(texts)
        input_ids = np.array([e.ids for e in encoded], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        with self._lock:
            hidden = self._session.run(None, feed)[0]
        mask = attention_mask[..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        norms[norms == 0] = 1e-12
        return (pooled / norms).astype(np.float32)


_cache: dict[tuple[Path, int | None, bool], Embedder] = {}
_cache_lock = threading.Lock()


def get_embedder(model_dir: Path, *, threads: int | None = None, quantized: bool = False) -> Embedder:
    """Return the process-wide ``Embedder`` for ``model_dir`` (created once, then reused)."""
    key = (Path(model_dir).expanduser().resolve(), threads, quantized)
    with _cache_lock:
        embedder = _cache.get(key)
        if embedder is None:
            embedder = _cache[key] = Embedder(key[0], threads=threads, quantized=quantized)
        return embedder
