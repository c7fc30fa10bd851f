"""A persisted BM25 index over one collection's chunks (bm25s underneath).

The index stores the stemmed tokens of every chunk, keyed by chunk id, in one
JSON file written atomically (temp file, fsync, rename). The bm25s matrices
are rebuilt from those tokens on load and after every change; that is cheap
(well under a second for 10k chunks) and keeps the file format trivial.
A ``fingerprint`` of the sorted chunk ids lets the engine check that BM25 and
Chroma hold exactly the same chunks.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import bm25s
import numpy as np

logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s logs every index build at DEBUG

_FORMAT = 1


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-case, drop English stop words, Snowball-stem (bm25s + PyStemmer)."""
    if not texts:
        return []
    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


def fingerprint(ids: Iterable[str]) -> str:
    """Order-independent digest of a set of chunk ids."""
    h = hashlib.sha256()
    for chunk_id in sorted(ids):
        h.update(chunk_id.encode())
        h.update(b"\0")
    return h.hexdigest()


class Bm25Index:
    """BM25 over chunk ids. Not thread-safe for writes: the engine serialises them."""

    def __init__(self, path: Path, *, k1: float = 1.2, b: float = 0.75):
        self.path = path
        self.k1, self.b = k1, b
        self._tokens: dict[str, list[str]] = {}
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._retriever: bm25s.BM25 | None = None
        self._stamp: tuple[int, int] | None = None
        self.generation: str | None = None
        """The write (journal transaction id) this index reflects; matches the collection's marker."""

    # -- persistence -------------------------------------------------------------------------
    def load(self) -> Bm25Index:
        """Read the index from disk (an absent file is an empty index)."""
        self._tokens = {}
        if self.path.exists():
            with gzip.open(self.path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
            if data.get("format") != _FORMAT:
                raise ValueError(f"unsupported BM25 index format in {self.path}")
            self._tokens = dict(zip(data["ids"], data["tokens"], strict=True))
            self.generation = data.get("generation")
        self._stamp = self._file_stamp()
        self._rebuild()
        return self

    def save(self) -> None:
        """Write atomically: a crash leaves either the old file or the new one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ids = sorted(self._tokens)
        data = {"format": _FORMAT, "fingerprint": fingerprint(ids), "generation": self.generation, "ids": ids, "tokens": [self._tokens[i] for i in ids]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".bm25-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as fh:
                fh.write(json.dumps(data, separators=(",", ":")).encode())
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = self._file_stamp()

    def stale(self) -> bool:
        """True when another process rewrote the file since we loaded it."""
        return self._file_stamp() != self._stamp

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    # -- changes -----------------------------------------------------------------------------
    def apply(self, add: Mapping[str, str] | None = None, remove: Iterable[str] = ()) -> None:
        """Remove then add chunks (id -> index text) and rebuild the matrices in memory."""
        for chunk_id in remove:
            self._tokens.pop(chunk_id, None)
        if add:
            ids = list(add)
            for chunk_id, toks in zip(ids, tokenize([add[i] for i in ids]), strict=True):
                self._tokens[chunk_id] = toks
        self._rebuild()

    def _rebuild(self) -> None:
        self._ids = sorted(self._tokens)
        self._row = {chunk_id: row for row, chunk_id in enumerate(self._ids)}
        corpus = [self._tokens[i] for i in self._ids]
        if not any(corpus):
            self._retriever = None
            return
        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.index(corpus, show_progress=False)
        self._retriever = retriever

    # -- reading -----------------------------------------------------------------------------
    @property
    def ids(self) -> set[str]:
        return set(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def search(self, query: str, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """Top ``k`` (chunk id, BM25 score) with score > 0, restricted to ``allowed`` ids if given."""
        if self._retriever is None or k <= 0:
            return []
        q = tokenize([query])[0]
        vocab = self._retriever.vocab_dict
        q = [t for t in q if t in vocab]
        if not q:
            return []
        scores = self._retriever.get_scores(q)
        if allowed is not None:
            rows = [self._row[i] for i in allowed if i in self._row]
            if not rows:
                return []
            mask = np.zeros(len(self._ids), dtype=bool)
            mask[rows] = True
            scores = np.where(mask, scores, 0.0)
        k = min(k, len(self._ids))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]  # by score, ties by row: deterministic
        return [(self._ids[int(r)], float(scores[r])) for r in top if scores[r] > 0]
