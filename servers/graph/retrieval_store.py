"""Pull documents from the retrieval server's store into the graph (``graph_ingest(from_retrieval=...)``).

The DESIGN keeps servers apart, so the graph server does not import the retrieval server. It reads
the Chroma collection the retrieval server writes instead, through ``chromadb`` directly and with the
same settings (``GUARDRAG_DATA_DIR`` -> embedded Chroma under ``DATA_DIR/chroma``, or
``GUARDRAG_CHROMA_URL``). It relies only on plain Chroma data the retrieval server puts on every
chunk: the chunk text as the Chroma document, and the metadata keys

- ``doc_id``, ``position`` (0 for a document's first chunk), ``title``, ``source``;
- ``doc_hash`` and ``ingested_at`` (to tell a document's current chunks from a half-replaced version);
- ``user_keys`` (comma-separated names of the caller's own metadata keys, which are copied along).

Chunk ids are kept, so graph provenance and retrieval hits name the same chunks (and retrieval hits
can seed ``multihop_search``). Read-only: nothing is written to the retrieval store. Pulling is
incremental: a document the graph already holds unchanged is skipped, a changed one is replaced.
A document deleted from the retrieval store is not deleted from the graph (call ``graph_delete``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import core  # noqa: F401  (offline switches before chromadb is imported)
from core.errors import GuardragError, InvalidInput, NotFound, Unavailable
from core.settings import Settings
from core.validation import check_collection_name, decode_cursor, encode_cursor
from graph.schemas import ChunkInput, GraphItem

__all__ = ["MAX_PULL", "Pulled", "RetrievalStore"]

MAX_PULL = 500
"""Most documents one pull reads (the rest come with the cursor)."""

_PAGE = 10_000  # rows per Chroma get when listing documents
_IDS_PER_GET = 100  # documents per Chroma get when reading chunks


@dataclass
class Pulled:
    """A page of documents read from a retrieval collection, ready for :meth:`GraphEngine.ingest_texts`."""

    collection: str
    items: list[GraphItem]
    chunks: int
    total: int
    next_cursor: str | None
    missing: list[str] = field(default_factory=list)


class RetrievalStore:
    """Read-only view of the retrieval server's Chroma store. Thread-safe; the client opens lazily."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def _chroma(self) -> Any:
        """The Chroma client, opened exactly as the retrieval server opens it (same Chroma settings, so
        both can live in one process)."""
        with self._lock:
            if self._client is not None:
                return self._client
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            chroma_settings = ChromaSettings(anonymized_telemetry=False)
            url = self.settings.chroma_url
            try:
                if url:
                    from urllib.parse import urlparse

                    parsed = urlparse(url)
                    if parsed.scheme not in ("http", "https") or not parsed.hostname:
                        raise InvalidInput(f"chroma_url {url!r} must look like http://host:port.")
                    self._client = chromadb.HttpClient(
                        host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                        ssl=parsed.scheme == "https", settings=chroma_settings)
                else:
                    path = self.settings.chroma_path
                    if not path.exists():
                        raise NotFound(f"no retrieval store at {path}: ingest documents with the retrieval server "
                                       "first (same GUARDRAG_DATA_DIR), or give the documents inline.")
                    self._client = chromadb.PersistentClient(path=str(path), settings=chroma_settings)
            except GuardragError:
                raise
            except Exception as exc:
                raise Unavailable(f"cannot open the retrieval store at {url or self.settings.chroma_path}: {exc}") from exc
            return self._client

    def _collection(self, name: str) -> Any:
        from chromadb.errors import NotFoundError

        try:
            check_collection_name(name)
        except InvalidInput as exc:
            raise InvalidInput(f"from_retrieval: {exc.message}") from None
        client = self._chroma()
        try:
            return client.get_collection(name)
        except (NotFoundError, ValueError):
            known = sorted(c.name if hasattr(c, "name") else str(c) for c in client.list_collections())
            raise NotFound(f"retrieval collection {name!r} does not exist"
                           + (f"; existing: {', '.join(known)}." if known else "; the retrieval store is empty.")
                           ) from None

    def _document_ids(self, col: Any, doc_ids: Sequence[str] | None) -> list[str]:
        """Sorted ids of the documents in ``col`` (each has a chunk at position 0), or of ``doc_ids`` found."""
        found: set[str] = set()
        if doc_ids is None:
            offset = 0
            while True:
                got = col.get(where={"position": 0}, include=["metadatas"], limit=_PAGE, offset=offset)
                found.update(str((m or {}).get("doc_id", "")) for m in got["metadatas"])
                if len(got["ids"]) < _PAGE:
                    break
                offset += _PAGE
        else:
            ids = sorted(set(doc_ids))
            for start in range(0, len(ids), _IDS_PER_GET):
                part = ids[start : start + _IDS_PER_GET]
                where = {"$and": [{"position": 0}, {"doc_id": {"$in": part}}]}
                got = col.get(where=where, include=["metadatas"])
                found.update(str((m or {}).get("doc_id", "")) for m in got["metadatas"])
        found.discard("")
        return sorted(found)

    def pull(self, collection: str, *, doc_ids: Sequence[str] | None = None, limit: int = 50,
             cursor: str | None = None) -> Pulled:
        """Read a page of ``limit`` documents (sorted by doc_id) from a retrieval collection, each as a
        :class:`GraphItem` with its retrieval chunks. O(documents listed + chunks read)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PULL:
            raise InvalidInput(f"limit must be between 1 and {MAX_PULL}; got {limit!r}. Use the cursor for more.")
        if doc_ids is not None and not doc_ids:
            raise InvalidInput("doc_ids is an empty list; omit it to pull the whole collection.")
        offset = decode_cursor(cursor)
        col = self._collection(collection)
        ids = self._document_ids(col, doc_ids)
        missing = sorted(set(doc_ids) - set(ids)) if doc_ids is not None else []
        if not ids:
            raise NotFound(f"retrieval collection {collection!r} holds none of the requested documents."
                           if doc_ids is not None else f"retrieval collection {collection!r} holds no documents.")
        if offset >= len(ids):
            raise InvalidInput(f"cursor {cursor!r} is past the end ({len(ids)} documents); omit it to start again.")
        page = ids[offset : offset + limit]
        rows: dict[str, list[tuple[str, str, dict[str, Any]]]] = {d: [] for d in page}
        for start in range(0, len(page), _IDS_PER_GET):
            part = page[start : start + _IDS_PER_GET]
            got = col.get(where={"doc_id": part[0]} if len(part) == 1 else {"doc_id": {"$in": part}},
                          include=["documents", "metadatas"])
            for chunk_id, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                meta = meta or {}
                if meta.get("doc_id") in rows:
                    rows[meta["doc_id"]].append((chunk_id, text or "", meta))
        items = [item for d in page if (item := _item(d, rows[d])) is not None]
        end = offset + len(page)
        return Pulled(collection=collection, items=items, chunks=sum(len(i.chunks or []) for i in items),
                      total=len(ids), next_cursor=encode_cursor(end) if end < len(ids) else None, missing=missing)


def _item(doc_id: str, rows: list[tuple[str, str, dict[str, Any]]]) -> GraphItem | None:
    """One document from its chunk rows: the chunks of its latest version, in order; None if all blank.

    While the retrieval server replaces a document it briefly holds the old and the new chunks (new
    ones are written first); keeping only the most recently ingested ``doc_hash`` reads one version."""
    if not rows:
        return None
    latest = max(rows, key=lambda r: (str(r[2].get("ingested_at", "")), str(r[2].get("doc_hash", ""))))[2]
    current = [r for r in rows if r[2].get("doc_hash") == latest.get("doc_hash")]
    current.sort(key=lambda r: (int(r[2].get("position", 0)), r[0]))
    chunks = [ChunkInput(chunk_id=cid, text=text) for cid, text, _ in current if text.strip()]
    if not chunks:
        return None
    first = current[0][2]
    user_keys = [k for k in str(first.get("user_keys") or "").split(",") if k and k in first]
    return GraphItem(doc_id=doc_id, title=first.get("title") or None, source=first.get("source") or None,
                     metadata={k: first[k] for k in user_keys}, chunks=chunks)
