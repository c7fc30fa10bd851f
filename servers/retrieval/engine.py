"""The retrieval engine: hybrid search over Chroma + BM25, with crash-safe ingest.

Plain Python, no MCP. ``servers/retrieval/server.py`` is a thin adapter over it.

Consistency model
-----------------
Chroma holds the chunks (text, vectors, metadata) and is the source of truth;
BM25 keeps the stemmed tokens of the same chunk ids in one file per collection.
Every write (a batch of documents, or a delete) is a transaction recorded in a
journal file before anything changes:

1. ``adding``: the new chunks are being upserted. A crash here rolls back:
   the new chunk ids (which embed the new document hash, so never collide
   with the old ones) are deleted; the old version stays intact.
2. ``replacing``: every new chunk is in Chroma; old chunks are being removed.
   A crash here rolls forward: the old chunk ids are deleted.
3. the BM25 file is rewritten atomically, then the journal entry is removed.

At start-up the engine replays the journal and then compares, for every
collection, the chunk ids in Chroma with the ids in BM25, repairing BM25 from
Chroma when they differ. So a ``kill -9`` at any instant never leaves a
document half indexed, or in one index and not the other.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

import core  # noqa: F401  (offline switches before chromadb is imported)
from core.errors import GuardragError, InvalidInput, NotFound, Unavailable
from core.schemas import GUARD_METADATA_KEYS, GuardVerdict
from core.settings import Settings
from core.validation import (
    check_collection_name,
    check_text,
    decode_cursor,
    encode_cursor,
    fsync_dir,
)
from core.validation import check_metadata as _check_metadata

# Imported here, in the main thread: Presidio and spaCy fail with circular-import errors when two threads
# import them at once (the warm-up thread and a first tool call).
from guards import policy as guard_policy
from servers.retrieval import chunking, loaders
from servers.retrieval.bm25_index import Bm25Index, fingerprint
from servers.retrieval.schemas import (
    BlockedHit,
    Chunk,
    CollectionInfo,
    DeleteResult,
    Document,
    DocumentInfo,
    DocumentOutcome,
    DocumentPage,
    IngestResult,
    LegHit,
    Provenance,
    SearchHit,
    SearchResult,
    Stats,
)

log = logging.getLogger("guardrag.retrieval")

Progress = Callable[[int, int, str], None]
Mode = Literal["hybrid", "vector", "bm25"]

#: metadata keys guardrag writes on every chunk; callers may filter on them but not set them.
RESERVED_KEYS = frozenset(
    {"doc_id", "source", "title", "heading_path", "position", "start_char", "end_char", "page",
     "content_hash", "doc_hash", "ingested_at", "format", "chunks", "user_keys", *GUARD_METADATA_KEYS}
)
_DOC_BATCH = 512          # documents per ingest transaction
_CHROMA_BATCH = 2000      # rows per Chroma call (below its max batch size)
_MAX_QUERY_CHARS = 4000
_CHUNK_ID_RE = re.compile(r"^(.+)#[0-9a-f]{12}-\d+$")  # f"{doc_id}#{doc_hash[:12]}-{position}"
_MAX_CANDIDATES = 2000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def index_text(text: str, meta: dict[str, Any]) -> str:
    """The string that is embedded and BM25-indexed for a chunk: title, heading path, text."""
    title, path = meta.get("title") or "", meta.get("heading_path") or ""
    if title and path.split(" > ")[0] == title:  # a Markdown H1 is usually the title too
        title = ""
    head = " > ".join(p for p in (title, path) if p)
    return f"{head}\n{text}" if head else text


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Validate a chunk's caller metadata: flat, scalar values, none of guardrag's own keys."""
    return _check_metadata(metadata, RESERVED_KEYS)


def check_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate a Chroma ``where`` filter with Chroma's own validator; {} or None means no filter."""
    if not where:
        return None
    from chromadb.api.types import validate_where

    try:
        validate_where(where)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"malformed filter: {str(exc).removesuffix(' in get.')}. Use Chroma 'where' syntax, e.g. "
            '{"year": {"$gte": 2020}} or {"$and": [{"lang": "en"}, {"source": {"$in": ["a.md", "b.md"]}}]}.'
        ) from None
    return where


@dataclass
class TextItem:
    """A document given as text by the caller."""

    text: str
    doc_id: str | None = None
    source: str | None = None
    title: str | None = None
    format: Literal["text", "markdown", "html"] = "text"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Prepared:
    doc_id: str
    source: str
    doc: loaders.LoadedDocument
    metadata: dict[str, Any]
    doc_hash: str


@dataclass
class _Txn:
    """One journalled write."""

    id: str
    collection: str
    phase: str
    new_ids: list[str]
    old_ids: list[str]

    def dump(self) -> dict[str, Any]:
        return self.__dict__


class RetrievalEngine:
    """Hybrid retrieval over Chroma collections. Thread-safe; writes are serialised."""

    def __init__(self, settings: Settings, *, embedder: Any | None = None, recover: bool = True):
        self.settings = settings
        self.rs = settings.retrieval
        self._embedder = embedder
        self._client = self._connect()
        key = "embedded" if not settings.chroma_url else re.sub(r"[^A-Za-z0-9]+", "_", settings.chroma_url)
        self.state_dir = settings.data_dir / "retrieval" / key
        self.journal_dir = self.state_dir / "journal"
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self._bm25: dict[str, Bm25Index] = {}
        self._collections: dict[str, Any] = {}
        self._checked: dict[str, float] = {}
        self._lock = threading.RLock()
        self._counts: dict[str, tuple[str, int]] = {}  # collection -> (generation, chunks), see _info
        self.repairs: list[str] = self.recover() if recover else []

    # ---------------------------------------------------------------- plumbing
    def _connect(self):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        try:
            if self.settings.chroma_url:
                from urllib.parse import urlparse

                url = urlparse(self.settings.chroma_url)
                if url.scheme not in ("http", "https") or not url.hostname:
                    raise InvalidInput(f"chroma_url {self.settings.chroma_url!r} must look like http://host:port.")
                return chromadb.HttpClient(
                    host=url.hostname, port=url.port or (443 if url.scheme == "https" else 8000),
                    ssl=url.scheme == "https", settings=chroma_settings,
                )
            self.settings.chroma_path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(self.settings.chroma_path), settings=chroma_settings)
        except GuardragError:
            raise
        except Exception as exc:
            where = self.settings.chroma_url or self.settings.chroma_path
            raise Unavailable(f"cannot open Chroma at {where}: {exc}") from exc

    @property
    def embedder(self):
        if self._embedder is None:
            from core.embedder import get_embedder

            self._embedder = get_embedder(self.settings.model_dir, threads=self.settings.embed_threads)
        return self._embedder

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """In-process lock plus an advisory file lock shared by every process on this data dir."""
        with self._lock:
            lock_path = self.state_dir / "write.lock"
            with open(lock_path, "a+") as fh:
                try:
                    import fcntl

                    fcntl.flock(fh, fcntl.LOCK_EX)
                except ImportError:  # pragma: no cover - non-POSIX
                    pass
                yield

    def _collection(self, name: str, *, create: bool = False):
        check_collection_name(name)
        col = self._collections.get(name)
        if col is not None:
            return col
        from chromadb.errors import NotFoundError
        from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

        try:
            if create:
                # Recording Chroma's default (ONNX MiniLM) function keeps the collection usable by
                # chroma-mcp and plain Chroma clients; guardrag always passes its own vectors.
                col = self._client.get_or_create_collection(
                    name, embedding_function=ONNXMiniLM_L6_V2(),
                    configuration={"hnsw": {"space": "cosine"}}, metadata={"guardrag": 1},
                )
            else:
                col = self._client.get_collection(name)
        except NotFoundError:
            raise NotFound(
                f"collection {name!r} does not exist; ingest into it first, or call list_collections to see the "
                "existing ones."
            ) from None
        self._collections[name] = col
        return col

    def _bm25_for(self, name: str) -> Bm25Index:
        """The collection's BM25 index, reloaded when another process on this data dir rewrote it."""
        idx = self._bm25.get(name)
        if idx is None or idx.stale():
            idx = Bm25Index(self.state_dir / "bm25" / f"{name}.json.gz").load()
            self._bm25[name] = idx
        return idx

    def _fresh_bm25(self, name: str, col) -> Bm25Index:
        """BM25 for a search: in Chroma server mode, first catch up with writes made by other instances.

        Every committed write stamps the Chroma collection with a generation marker; an instance that
        sees a marker its BM25 index does not carry re-syncs BM25 from Chroma (checked at most once a
        second, so searches stay cheap)."""
        with self._lock:
            idx = self._bm25_for(name)
            if not self.settings.chroma_url:
                return idx
            now = time.monotonic()
            if now - self._checked.get(name, 0.0) < 1.0:
                return idx
            self._checked[name] = now
        marker = (self._client.get_collection(name).metadata or {}).get("guardrag_gen")
        if marker and marker != idx.generation:
            with self._write_lock():
                self._sync_bm25(name, generation=marker)
            idx = self._bm25_for(name)
        return idx

    def _commit(self, col, idx: Bm25Index, txn: _Txn) -> None:
        """Finish a write: save BM25 under the new generation, stamp the collection, drop the journal."""
        idx.generation = txn.id
        idx.save()
        col.modify(metadata={**(col.metadata or {}), "guardrag_gen": txn.id})
        self._journal_done(txn)

    def _all_ids(self, col) -> set[str]:
        ids: set[str] = set()
        offset = 0
        while True:
            got = col.get(include=[], limit=10_000, offset=offset)["ids"]
            ids.update(got)
            if len(got) < 10_000:
                return ids
            offset += len(got)

    def _get_rows(self, col, ids: Sequence[str], include: list[str]) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _CHROMA_BATCH):
            part = list(ids[start : start + _CHROMA_BATCH])
            got = col.get(ids=part, include=include)
            for i, chunk_id in enumerate(got["ids"]):
                rows[chunk_id] = {key: got[key][i] for key in include}
        return rows

    def warm_up(self) -> None:
        """Load the embedding model and run it once, so the first search does not pay for it."""
        try:
            chunking.split_sentences("Warm up. Load the sentencizer.")
            if self.settings.guards.enabled:
                guard_policy.scan_retrieved("Warm up the injection scanner.")
            vector = self.embedder.embed(["warm up"])
            for info in self.list_collections():  # load each HNSW index and BM25 matrix now, not on a search
                if info.chunks:
                    self._collection(info.name).query(query_embeddings=vector, n_results=1, include=[])
                    with self._lock:
                        idx = self._bm25_for(info.name)
                    idx.search("warm up", 1)
            # Everything loaded so far lives as long as the process: move it out of the cyclic GC's
            # reach, so full collections stop scanning it (they caused 100-200 ms search stalls).
            gc.collect()
            gc.freeze()
        except GuardragError as exc:  # reported again, clearly, on the first call that needs it
            log.warning("embedder not ready: %s", exc.message)

    # ---------------------------------------------------------------- journal + recovery
    def _journal_write(self, txn: _Txn) -> None:
        path = self.journal_dir / f"{txn.id}.json"
        fd, tmp = tempfile.mkstemp(dir=self.journal_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(txn.dump(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(self.journal_dir)

    def _journal_done(self, txn: _Txn) -> None:
        (self.journal_dir / f"{txn.id}.json").unlink(missing_ok=True)
        fsync_dir(self.journal_dir)

    def _delete_ids(self, col, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), _CHROMA_BATCH):
            col.delete(ids=list(ids[start : start + _CHROMA_BATCH]))

    def recover(self) -> list[str]:
        """Replay unfinished transactions, then make BM25 match Chroma. Returns what was repaired."""
        repairs: list[str] = []
        with self._write_lock():
            for path in [*self.journal_dir.glob("*.tmp"), *(self.state_dir / "bm25").glob(".bm25-*.tmp")]:
                path.unlink(missing_ok=True)  # half-written files of a crashed write; the originals are intact
            for path in sorted(self.journal_dir.glob("*.json")):
                try:
                    txn = _Txn(**json.loads(path.read_text()))
                    col = self._collection(txn.collection, create=True)
                except (ValueError, TypeError, GuardragError) as exc:
                    log.error("unreadable journal entry %s (%s); moved aside", path.name, exc)
                    path.rename(path.with_suffix(".bad"))
                    continue
                if txn.phase == "adding":
                    self._delete_ids(col, txn.new_ids)
                    repairs.append(f"{txn.collection}: rolled back an interrupted ingest ({len(txn.new_ids)} chunks)")
                else:
                    self._delete_ids(col, txn.old_ids)
                    repairs.append(f"{txn.collection}: completed an interrupted {txn.phase} ({len(txn.old_ids)} chunks)")
                self._journal_done(txn)
            for col in self._client.list_collections():
                name = col.name if hasattr(col, "name") else str(col)
                try:
                    check_collection_name(name)
                except InvalidInput:
                    continue
                fixed = self._sync_bm25(name)
                if fixed:
                    repairs.append(f"{name}: {fixed}")
        for line in repairs:
            log.warning("repair: %s", line)
        return repairs

    def _sync_bm25(self, name: str, generation: str | None = None) -> str | None:
        """Make BM25 hold exactly Chroma's chunk ids (adds and removes only the difference)."""
        col = self._collection(name)
        chroma_ids = self._all_ids(col)
        idx = self._bm25_for(name)
        bm25_ids = idx.ids
        if chroma_ids == bm25_ids:
            if generation and idx.generation != generation:
                idx.generation = generation
                idx.save()
            return None
        missing = sorted(chroma_ids - bm25_ids)
        extra = bm25_ids - chroma_ids
        rows = self._get_rows(col, missing, ["documents", "metadatas"])
        idx.apply(add={i: index_text(r["documents"], r["metadatas"] or {}) for i, r in rows.items()}, remove=extra)
        idx.generation = generation or (col.metadata or {}).get("guardrag_gen")
        idx.save()
        return f"re-synced BM25 with Chroma (+{len(missing)} / -{len(extra)} chunks)"

    # ---------------------------------------------------------------- ingest
    def ingest_texts(self, collection: str, items: Sequence[TextItem], progress: Progress | None = None) -> IngestResult:
        """Ingest documents given as text. All items are validated before anything is written."""
        check_collection_name(collection)
        if not items:
            raise InvalidInput("nothing to ingest: give at least one document.")
        prepared: list[_Prepared] = []
        seen: set[str] = set()
        for n, item in enumerate(items):
            label = f"document {n}" if len(items) > 1 else "text"
            if len(item.text) > self.rs.max_text_chars:
                raise InvalidInput(
                    f"{label} has {len(item.text):,} characters; the limit is {self.rs.max_text_chars:,} "
                    "(setting GUARDRAG_RETRIEVAL__MAX_TEXT_CHARS). Split it or use ingest_path."
                )
            check_text(item.text, label)
            meta = check_metadata(item.metadata)
            doc = loaders.parse_text(item.text, item.format)
            if item.title:
                doc = doc.model_copy(update={"title": item.title})
            if not doc.text.strip():
                raise InvalidInput(f"{label} has no text left after cleaning.")
            doc_id = item.doc_id or f"text-{_sha256(doc.text)[:16]}"
            self._check_doc_id(doc_id)
            if doc_id in seen:
                raise InvalidInput(f"doc_id {doc_id!r} appears twice in one call.")
            seen.add(doc_id)
            prepared.append(self._prepared(doc_id, item.source or doc_id, doc, meta))
        return self._ingest(collection, prepared, len(prepared), progress)

    def ingest_path(
        self,
        collection: str,
        path: str | Path,
        *,
        recursive: bool = True,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> IngestResult:
        """Ingest a file or a directory tree (txt, md, html, pdf). Unreadable files are reported, not fatal."""
        check_collection_name(collection)
        meta = check_metadata(metadata)
        target, root = self._resolve_in_roots(path)
        if target.is_dir():
            files = self._walk(target, root, recursive, include, exclude)
            if not files:
                raise InvalidInput(
                    f"no supported files under {target} (supported: {', '.join(sorted(loaders.SUPPORTED_SUFFIXES))}; "
                    f"include={list(include)}, exclude={list(exclude)})."
                )
        elif target.is_file():
            files = [target]
        else:
            raise InvalidInput(f"{target} does not exist or is not a regular file or directory.")
        max_bytes = int(self.rs.max_file_mb * 1024 * 1024)
        if len(files) == 1:  # one file asked for by name: its problem is the call's error
            return self._ingest(collection, [self._load(files[0], root, max_bytes, meta)], 1, progress)

        def read() -> Iterator[_Prepared | DocumentOutcome]:  # lazily: a batch of files in memory at a time
            for file in files:
                try:
                    yield self._load(file, root, max_bytes, meta)
                except GuardragError as exc:
                    source = file.relative_to(root).as_posix()
                    yield DocumentOutcome(doc_id=source, source=source, status="failed", reason=exc.message)

        return self._ingest(collection, read(), len(files), progress)

    def _load(self, file: Path, root: Path, max_bytes: int, meta: dict[str, Any]) -> _Prepared:
        source = file.relative_to(root).as_posix()
        doc = loaders.load_file(file, max_bytes=max_bytes)
        if not doc.text.strip():
            raise InvalidInput(f"{source}: no text could be extracted")
        return self._prepared(source, source, doc, meta)

    def _check_doc_id(self, doc_id: str) -> None:
        if not doc_id or len(doc_id) > 512 or "\x00" in doc_id or any(ord(c) < 32 for c in doc_id):
            raise InvalidInput(f"doc_id {doc_id[:80]!r} is invalid: 1-512 printable characters.")

    def _prepared(self, doc_id: str, source: str, doc: loaders.LoadedDocument, meta: dict[str, Any]) -> _Prepared:
        digest = _sha256(doc.text + "\x00" + json.dumps(meta, sort_keys=True) + "\x00" + (doc.title or ""))
        return _Prepared(doc_id=doc_id, source=source, doc=doc, metadata=meta, doc_hash=digest)

    def _resolve_in_roots(self, path: str | Path) -> tuple[Path, Path]:
        raw = str(path)
        if not raw.strip() or "\x00" in raw:
            raise InvalidInput("path is empty or contains NUL bytes.")
        target = Path(raw).expanduser()
        roots = self.rs.allowed_roots()
        if not roots:
            raise InvalidInput(
                "no ingest roots are configured and the working directory is the filesystem root; set "
                "GUARDRAG_RETRIEVAL__ROOTS (a JSON list of directories) or [retrieval] roots in guardrag.toml."
            )
        if not target.is_absolute():
            target = roots[0] / target
        target = target.resolve()
        for root in roots:
            if target == root or target.is_relative_to(root):
                return target, root
        raise InvalidInput(
            f"{target} is outside the allowed roots {[str(r) for r in roots]}; add its directory to "
            "GUARDRAG_RETRIEVAL__ROOTS (JSON list) or the [retrieval] roots setting to allow it."
        )

    def _walk(self, top: Path, root: Path, recursive: bool, include: Sequence[str], exclude: Sequence[str]) -> list[Path]:
        pattern = "**/*" if recursive else "*"
        files = []
        for file in sorted(top.glob(pattern)):
            if not file.is_file() or file.is_symlink() or not file.resolve().is_relative_to(root):
                continue  # symlinks (to files, or via linked directories) could lead outside the roots
            rel = file.relative_to(top).as_posix()
            if any(part.startswith(".") for part in file.relative_to(top).parts):
                continue
            if include and not any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(file.name, g) for g in include):
                continue
            if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(file.name, g) for g in exclude):
                continue
            if file.suffix.lower() in loaders.SUPPORTED_SUFFIXES:
                files.append(file)
        return files

    def _ingest(
        self, collection: str, docs: Iterable[_Prepared | DocumentOutcome], total: int, progress: Progress | None
    ) -> IngestResult:
        """Write documents in transactions of ``_DOC_BATCH``; outcomes given in ``docs`` pass through."""
        started = time.perf_counter()
        outcomes: list[DocumentOutcome] = []
        written = deleted = done = 0
        stream = iter(docs)
        with self._write_lock():
            col = self._collection(collection, create=True)
            while batch := list(itertools.islice(stream, _DOC_BATCH)):
                ready = [d for d in batch if isinstance(d, _Prepared)]
                outcomes.extend(d for d in batch if isinstance(d, DocumentOutcome))
                w, d, outs = self._ingest_batch(col, collection, ready, progress, done, total)
                written, deleted, done = written + w, deleted + d, done + len(batch)
                outcomes.extend(outs)
        count = {s: sum(o.status == s for o in outcomes) for s in ("added", "replaced", "unchanged", "failed")}
        if progress:
            progress(total, total, f"done: {count['added']} added, {count['replaced']} replaced")
        return IngestResult(
            collection=collection, documents=outcomes, added=count["added"], replaced=count["replaced"],
            unchanged=count["unchanged"], failed=count["failed"], chunks_written=written, chunks_deleted=deleted,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _existing(self, col, doc_ids: list[str]) -> dict[str, tuple[str, list[str]]]:
        """doc_id -> (doc_hash, chunk ids) for the documents already in the collection."""
        found: dict[str, tuple[str, list[str]]] = {}
        for start in range(0, len(doc_ids), 500):
            part = doc_ids[start : start + 500]
            where = {"doc_id": part[0]} if len(part) == 1 else {"doc_id": {"$in": part}}
            got = col.get(where=where, include=["metadatas"])
            for chunk_id, meta in zip(got["ids"], got["metadatas"], strict=True):
                doc_hash, ids = found.get(meta["doc_id"], (meta["doc_hash"], []))
                ids.append(chunk_id)
                found[meta["doc_id"]] = (doc_hash, ids)
        return found

    def _ingest_batch(self, col, collection, batch, progress, done_before, total):
        if not batch:
            return 0, 0, []
        existing = self._existing(col, [d.doc_id for d in batch])
        outcomes: list[DocumentOutcome] = []
        ids: list[str] = []
        texts: list[str] = []
        metas: list[dict[str, Any]] = []
        old_ids: list[str] = []
        count_tokens = self.embedder.count_tokens
        now = _now()
        for doc in batch:
            old = existing.get(doc.doc_id)
            if old and old[0] == doc.doc_hash:
                outcomes.append(DocumentOutcome(doc_id=doc.doc_id, source=doc.source, status="unchanged", chunks=len(old[1])))
                continue
            budget = self.rs.chunk_tokens - 2 - _prefix_tokens(doc.doc, count_tokens)
            pieces = chunking.chunk_document(
                doc.doc, count_tokens=count_tokens, max_tokens=budget,
                overlap_tokens=min(self.rs.chunk_overlap, budget // 4),
            )
            if not pieces:
                outcomes.append(DocumentOutcome(doc_id=doc.doc_id, source=doc.source, status="failed", reason="no text"))
                continue
            for piece in pieces:
                ids.append(f"{doc.doc_id}#{doc.doc_hash[:12]}-{piece.position}")
                texts.append(piece.text)
                meta = dict(doc.metadata)
                meta.update(
                    doc_id=doc.doc_id, source=doc.source, title=doc.doc.title or "",
                    heading_path=" > ".join(piece.heading_path), position=piece.position,
                    start_char=piece.start_char, end_char=piece.end_char, page=piece.page if piece.page is not None else -1,
                    content_hash=_sha256(piece.text), doc_hash=doc.doc_hash, ingested_at=now,
                    format=doc.doc.format, chunks=len(pieces), user_keys=",".join(sorted(doc.metadata)),
                )
                if self.settings.guards.enabled:  # scanned once here; a search reads the stored verdict
                    meta.update(guard_policy.scan_to_metadata(guard_policy.scan_retrieved(piece.text, meta["content_hash"])))
                metas.append(meta)
            if old:
                old_ids.extend(old[1])
            outcomes.append(DocumentOutcome(
                doc_id=doc.doc_id, source=doc.source, status="replaced" if old else "added", chunks=len(pieces),
            ))
        if not ids and not old_ids:
            return 0, 0, outcomes
        index_texts = [index_text(t, m) for t, m in zip(texts, metas, strict=True)]
        vectors = self._embed_with_progress(index_texts, progress, done_before, len(batch), total)
        txn = _Txn(id=f"{time.time_ns()}-{uuid.uuid4().hex[:8]}", collection=collection, phase="adding",
                   new_ids=ids, old_ids=old_ids)
        self._journal_write(txn)
        for start in range(0, len(ids), _CHROMA_BATCH):
            end = start + _CHROMA_BATCH
            col.upsert(ids=ids[start:end], embeddings=vectors[start:end], documents=texts[start:end], metadatas=metas[start:end])
        if old_ids:
            txn.phase = "replacing"
            self._journal_write(txn)
            self._delete_ids(col, old_ids)
        idx = self._bm25_for(collection)
        idx.apply(add=dict(zip(ids, index_texts, strict=True)), remove=old_ids)
        self._commit(col, idx, txn)
        return len(ids), len(old_ids), outcomes

    def _embed_with_progress(self, texts, progress, done_before, n_docs, total) -> np.ndarray:
        if not progress:
            return self.embedder.embed(texts)
        parts = []
        step = 256
        for start in range(0, len(texts), step):
            parts.append(self.embedder.embed(texts[start : start + step]))
            frac = min(1.0, (start + step) / len(texts))
            progress(done_before + int(frac * n_docs), total, f"embedded {min(start + step, len(texts))}/{len(texts)} chunks")
        return np.concatenate(parts) if parts else np.zeros((0, 384), np.float32)

    # ---------------------------------------------------------------- delete
    def delete_document(self, collection: str, doc_id: str) -> DeleteResult:
        self._check_doc_id(doc_id)
        with self._write_lock():
            col = self._collection(collection)
            ids = col.get(where={"doc_id": doc_id}, include=[])["ids"]
            if not ids:
                raise NotFound(f"document {doc_id!r} is not in collection {collection!r}; see list_documents.")
            txn = _Txn(id=f"{time.time_ns()}-{uuid.uuid4().hex[:8]}", collection=collection, phase="deleting",
                       new_ids=[], old_ids=ids)
            self._journal_write(txn)
            self._delete_ids(col, ids)
            idx = self._bm25_for(collection)
            idx.apply(remove=ids)
            self._commit(col, idx, txn)
        return DeleteResult(collection=collection, doc_id=doc_id, chunks_deleted=len(ids))

    # ---------------------------------------------------------------- search
    def search(
        self,
        collection: str,
        query: str,
        *,
        k: int = 10,
        where: dict[str, Any] | None = None,
        mode: Mode = "hybrid",
        cursor: str | None = None,
        unique_documents: bool = False,
        mmr: bool = False,
        mmr_lambda: float = 0.5,
        vector_weight: float | None = None,
        bm25_weight: float | None = None,
        rrf_k: int | None = None,
    ) -> SearchResult:
        """Hybrid search: vector and BM25 legs under the same filter, fused by weighted RRF."""
        t0 = time.perf_counter()
        check_text(query, "query")
        if len(query) > _MAX_QUERY_CHARS:
            raise InvalidInput(f"query has {len(query)} characters; the limit is {_MAX_QUERY_CHARS}.")
        if not 1 <= k <= self.rs.max_k:
            raise InvalidInput(f"k must be between 1 and {self.rs.max_k}; got {k}. Use the cursor for more results.")
        if mode not in ("hybrid", "vector", "bm25"):
            raise InvalidInput(f"mode must be 'hybrid', 'vector' or 'bm25'; got {mode!r}.")
        if not 0.0 <= mmr_lambda <= 1.0:
            raise InvalidInput("mmr_lambda must be between 0 and 1.")
        offset = decode_cursor(cursor)
        where = check_where(where)
        col = self._collection(collection)
        wv = self.rs.vector_weight if vector_weight is None else vector_weight
        wb = self.rs.bm25_weight if bm25_weight is None else bm25_weight
        if wv < 0 or wb < 0 or (mode == "hybrid" and wv + wb == 0):
            raise InvalidInput("vector_weight and bm25_weight must be >= 0 and not both 0.")
        kk = self.rs.rrf_k if rrf_k is None else rrf_k
        if kk < 1:
            raise InvalidInput("rrf_k must be >= 1.")
        depth = offset + k
        pool = min(_MAX_CANDIDATES, max(self.rs.candidates, depth * (4 if unique_documents or mmr else 1)))
        timings: dict[str, float] = {}

        vec: list[tuple[str, float]] = []
        if mode in ("hybrid", "vector"):
            t = time.perf_counter()
            qvec = self.embedder.embed([query])
            timings["embed"] = _ms(t)
            t = time.perf_counter()
            try:
                res = col.query(query_embeddings=qvec, n_results=pool, where=where, include=["distances"])
            except Exception as exc:  # Chroma rejects what its validator let through (rare)
                raise InvalidInput(f"Chroma rejected the query: {exc}") from exc
            vec = [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]
            timings["vector"] = _ms(t)
        bm: list[tuple[str, float]] = []
        if mode in ("hybrid", "bm25"):
            t = time.perf_counter()
            allowed = set(col.get(where=where, include=[])["ids"]) if where else None
            bm = self._fresh_bm25(collection, col).search(query, pool, allowed)
            timings["bm25"] = _ms(t)

        t = time.perf_counter()
        fused: dict[str, float] = {}
        ranks: dict[str, dict[str, LegHit]] = {}
        for leg, hits, weight in (("vector", vec, wv if mode != "bm25" else 0), ("bm25", bm, wb if mode != "vector" else 0)):
            for rank, (chunk_id, score) in enumerate(hits, start=1):
                ranks.setdefault(chunk_id, {})[leg] = LegHit(rank=rank, score=round(score, 6))
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (kk + rank)
        order = sorted(fused, key=lambda i: (-fused[i], i))
        if unique_documents:
            doc_of = self._doc_ids(col, order)
            seen: set[str] = set()
            order = [i for i in order if i in doc_of and not (doc_of[i] in seen or seen.add(doc_of[i]))]
        if mmr and order:
            head = max(depth * 4, 50)
            order = self._mmr(col, order[:head], fused, mmr_lambda) + order[head:]
        page = order[offset:depth]
        rows = self._get_rows(col, page, ["documents", "metadatas"])
        timings["fuse"] = _ms(t)
        t = time.perf_counter()
        stale: list = []
        hits, blocked = [], []
        for i in page:
            if i not in rows:  # a chunk deleted between the legs and now drops out
                continue
            chunk = self._chunk(collection, i, rows[i], stale)
            if chunk.text is None:
                blocked.append(BlockedHit(chunk_id=i, provenance=chunk.provenance, guard=chunk.guard))
                continue
            hits.append(SearchHit(**chunk.model_dump(), score=round(fused[i], 8),
                                  vector=ranks[i].get("vector"), bm25=ranks[i].get("bm25")))
        self._store_scans(col, stale)
        timings["guard"] = _ms(t)
        timings["total"] = _ms(t0)
        return SearchResult(
            collection=collection, query=query, mode=mode, hits=hits, blocked=blocked, total_candidates=len(order),
            next_cursor=encode_cursor(depth) if depth < len(order) else None, timings_ms=timings,
        )

    def _doc_ids(self, col, chunk_ids: list[str]) -> dict[str, str]:
        """chunk id -> doc id: parsed from guardrag's ids, read from metadata for anyone else's."""
        out: dict[str, str] = {}
        unknown: list[str] = []
        for chunk_id in chunk_ids:
            m = _CHUNK_ID_RE.match(chunk_id)
            if m:
                out[chunk_id] = m.group(1)
            else:
                unknown.append(chunk_id)
        if unknown:
            for chunk_id, row in self._get_rows(col, unknown, ["metadatas"]).items():
                out[chunk_id] = (row["metadatas"] or {}).get("doc_id", chunk_id)
        return out

    def _mmr(self, col, ids: list[str], rel: dict[str, float], lam: float) -> list[str]:
        """Maximal marginal relevance over the fused list (cosine between chunk vectors)."""
        got = col.get(ids=ids, include=["embeddings"])
        emb = {i: np.asarray(e, dtype=np.float32) for i, e in zip(got["ids"], got["embeddings"], strict=True)}
        ids = [i for i in ids if i in emb]
        if not ids:
            return ids
        mat = np.stack([emb[i] for i in ids])
        mat /= np.linalg.norm(mat, axis=1, keepdims=True) + 1e-12
        top = max(rel[i] for i in ids)
        relevance = np.array([rel[i] / top for i in ids])
        chosen: list[int] = []
        rest = list(range(len(ids)))
        max_sim = np.zeros(len(ids))
        while rest:
            scores = lam * relevance[rest] - (1 - lam) * max_sim[rest]
            best = rest[int(np.argmax(scores))]
            chosen.append(best)
            rest.remove(best)
            max_sim = np.maximum(max_sim, mat @ mat[best])
        return [ids[i] for i in chosen]

    # ---------------------------------------------------------------- reading
    def _guard(self, chunk_id: str, text: str, meta: dict[str, Any], stale: list) -> tuple[str | None, GuardVerdict]:
        """Apply the retrieved-text policy to a chunk, from its stored scan. A chunk with no scan, or one
        made by another scanner version, is scanned now and queued in ``stale`` to be stored."""
        gs = self.settings.guards
        if not gs.enabled:
            return text, GuardVerdict()
        content_hash = meta.get("content_hash") or _sha256(text)
        scan = guard_policy.scan_from_metadata(meta, content_hash)
        if scan is None:
            scan = guard_policy.scan_retrieved(text, content_hash)
            stale.append((chunk_id, guard_policy.scan_to_metadata(scan)))
        return guard_policy.apply_retrieved(text, scan, gs)

    def _store_scans(self, col, stale: list) -> None:
        """Store scans made at read time (best effort: a chunk replaced meanwhile is simply scanned again)."""
        if not stale:
            return
        try:
            with self._lock:
                col.update(ids=[i for i, _ in stale], metadatas=[m for _, m in stale])
        except Exception as exc:  # noqa: BLE001 - a read must not fail because a cache write did
            log.info("could not store %d guard scans: %s", len(stale), exc)

    def refresh_guard_scans(self, collection: str, batch: int = 1000) -> int:
        """Scan now every chunk whose stored scan is missing or from another scanner version (what reads
        would otherwise do lazily, one chunk at a time). Returns how many chunks were scanned."""
        if not self.settings.guards.enabled:
            return 0
        col = self._collection(collection)
        done = offset = 0
        while True:
            got = col.get(include=["documents", "metadatas"], limit=batch, offset=offset)
            if not got["ids"]:
                return done
            stale: list = []
            for chunk_id, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                self._guard(chunk_id, text or "", meta or {}, stale)
            self._store_scans(col, stale)
            done += len(stale)
            offset += len(got["ids"])

    def _chunk(self, collection: str, chunk_id: str, row: dict[str, Any], stale: list) -> Chunk:
        meta = dict(row["metadatas"] or {})
        page = meta.get("page", -1)
        prov = Provenance(
            doc_id=meta.get("doc_id", ""), source=meta.get("source", ""), title=meta.get("title") or None,
            heading_path=[p for p in (meta.get("heading_path") or "").split(" > ") if p],
            position=meta.get("position", 0), start_char=meta.get("start_char", 0), end_char=meta.get("end_char", 0),
            page=None if page in (None, -1) else page, content_hash=meta.get("content_hash", ""),
            doc_hash=meta.get("doc_hash", ""), ingested_at=meta.get("ingested_at", ""),
        )
        text, verdict = self._guard(chunk_id, row["documents"] or "", meta, stale)
        return Chunk(chunk_id=chunk_id, collection=collection, text=text, provenance=prov,
                     metadata=_user_metadata(meta), guard=verdict)

    def get_chunk(self, collection: str, chunk_id: str) -> Chunk:
        check_text(chunk_id, "chunk_id")
        col = self._collection(collection)
        rows = self._get_rows(col, [chunk_id], ["documents", "metadatas"])
        if chunk_id not in rows:
            raise NotFound(f"chunk {chunk_id!r} is not in collection {collection!r}.")
        stale: list = []
        chunk = self._chunk(collection, chunk_id, rows[chunk_id], stale)
        self._store_scans(col, stale)
        return chunk

    def get_document(self, collection: str, doc_id: str) -> Document:
        self._check_doc_id(doc_id)
        col = self._collection(collection)
        got = col.get(where={"doc_id": doc_id}, include=["documents", "metadatas"])
        if not got["ids"]:
            raise NotFound(f"document {doc_id!r} is not in collection {collection!r}; see list_documents.")
        stale: list = []
        chunks = sorted(
            (self._chunk(collection, i, {"documents": d, "metadatas": m}, stale)
             for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)),
            key=lambda c: c.provenance.position,
        )
        self._store_scans(col, stale)
        info = self._doc_info(collection, got["metadatas"][0], len(chunks))
        return Document(**info.model_dump(), chunk_ids=[c.chunk_id for c in chunks],
                        text="\n\n".join(c.text if c.text is not None else f"[blocked: chunk {c.chunk_id}]" for c in chunks),
                        guard=_document_verdict(chunks))

    def _doc_info(self, collection: str, meta: dict[str, Any], chunks: int | None = None) -> DocumentInfo:
        return DocumentInfo(
            doc_id=meta["doc_id"], collection=collection, source=meta.get("source", ""),
            title=meta.get("title") or None, doc_hash=meta.get("doc_hash", ""),
            chunks=chunks if chunks is not None else meta.get("chunks", 0), format=meta.get("format", "text"),
            ingested_at=meta.get("ingested_at", ""), metadata=_user_metadata(meta),
        )

    def list_documents(self, collection: str, *, limit: int = 50, cursor: str | None = None,
                       where: dict[str, Any] | None = None) -> DocumentPage:
        if not 1 <= limit <= 500:
            raise InvalidInput(f"limit must be between 1 and 500; got {limit}.")
        offset = decode_cursor(cursor)
        where = check_where(where)
        col = self._collection(collection)
        first = {"position": 0}
        full = {"$and": [first, where]} if where else first
        total = len(col.get(where=full, include=[])["ids"])
        got = col.get(where=full, include=["metadatas"], limit=limit, offset=offset)
        docs = [self._doc_info(collection, m) for m in got["metadatas"]]
        end = offset + len(docs)
        return DocumentPage(collection=collection, documents=docs, total=total,
                            next_cursor=encode_cursor(end) if end < total else None)

    def list_collections(self, name: str | None = None) -> list[CollectionInfo]:
        """The collections with their chunk counts and index generations; ``name``: only that one (an empty list
        when it does not exist)."""
        if name is not None:
            try:
                c = self._client.get_collection(name)
            except Exception:  # noqa: BLE001 - Chroma raises NotFoundError, or ValueError on older versions
                return []
            return [self._info(name, c)]
        out = []
        for col in self._client.list_collections():
            name = col.name if hasattr(col, "name") else str(col)
            out.append(self._info(name, self._client.get_collection(name)))
        return sorted(out, key=lambda c: c.name)

    def _info(self, name: str, col: Any) -> CollectionInfo:
        """A collection's info; its chunk count is remembered per generation (every committed write, by any
        process, stamps a new one), so a probe of an unchanged collection does not count it again."""
        gen = (col.metadata or {}).get("guardrag_gen")
        known = self._counts.get(name)
        if gen is not None and known is not None and known[0] == gen:
            return CollectionInfo(name=name, chunks=known[1], generation=gen)
        chunks = col.count()
        if gen is not None:
            self._counts[name] = (gen, chunks)
        return CollectionInfo(name=name, chunks=chunks, generation=gen)

    def stats(self, collection: str | None = None) -> Stats:
        names = [collection] if collection else [c.name for c in self.list_collections()]
        chunks = docs = bm25 = 0
        in_sync = True
        for name in names:
            col = self._collection(name)
            ids = self._all_ids(col)
            idx = self._fresh_bm25(name, col)
            chunks += len(ids)
            bm25 += len(idx)
            in_sync &= fingerprint(ids) == fingerprint(idx.ids)
            docs += len(col.get(where={"position": 0}, include=[])["ids"])
        emb = self.embedder
        return Stats(
            collection=collection, chunks=chunks, documents=docs, bm25_chunks=bm25, in_sync=in_sync,
            chroma=self.settings.chroma_url or f"embedded:{self.settings.chroma_path}",
            embedder={"model": emb.model_id, "dim": emb.dim, "onnx_sha256": emb.model_sha256},
            settings=self.rs.model_dump(mode="json"), repairs=self.repairs,
        )


def _prefix_tokens(doc: loaders.LoadedDocument, count_tokens: Callable[[str], int], cap: int = 48) -> int:
    """Tokens to reserve for the title / heading-path prefix that :func:`index_text` puts before a chunk.

    The embedder reads at most 256 tokens, so the chunk budget shrinks by the longest prefix in the
    document (capped: a prefix longer than ``cap`` costs the vector a few trailing words, not BM25)."""
    stack: list[tuple[int, str]] = []
    longest = ""
    for block in doc.blocks:
        if block.kind == "heading":
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.text))
            path = " > ".join(text for _, text in stack)
            longest = max(longest, path, key=len)
    prefix = index_text("", {"title": doc.title or "", "heading_path": longest})
    return min(cap, count_tokens(prefix)) if prefix.strip() else 0


def _user_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The caller's metadata of a chunk: the keys guardrag recorded, or for a collection written by
    another tool, everything that is not one of guardrag's own keys."""
    keys = [k for k in (meta.get("user_keys") or "").split(",") if k]
    if keys:
        return {k: meta[k] for k in keys if k in meta}
    return {k: v for k, v in meta.items() if k not in RESERVED_KEYS and v is not None}


_SEVERITY = {"unscanned": 0, "clean": 1, "flagged": 2, "redacted": 3, "quarantined": 4, "blocked": 5}


def _document_verdict(chunks: list[Chunk]) -> GuardVerdict:
    """A document's verdict: the most severe of its chunks', naming the chunks that are not clean."""
    worst = max(chunks, key=lambda c: _SEVERITY[c.guard.status]).guard
    marked = {c.chunk_id: c.guard.status for c in chunks if c.guard.status not in ("clean", "unscanned")}
    return GuardVerdict(status=worst.status, policy=worst.policy, details={"chunks": marked} if marked else {})


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 3)
