"""The graph engine: ingest, delete and search one or more knowledge graphs. Plain Python, no MCP.

Each named graph (``collection``) is a :class:`graph.state.GraphState` kept by a
:class:`graph.store.GraphStore` (one atomic snapshot file by default) plus a Chroma collection of
entity descriptions (embedded with guardrag's embedder, under ``DATA_DIR/graph/chroma``) for lookup
by meaning.

Consistency: the snapshot is the source of truth and is committed first; the entity index follows.
Each commit stamps a generation; the index carries the generation it reflects, and a graph opened
with a different one (a crash between the two writes) has its index re-synced from the snapshot.
Derived structures (undirected projection, name index, PPR arrays, communities) are rebuilt lazily
after a write (dirty flag: a version counter), never on the write itself.

Every chunk is scanned for injected instructions once at ingest; every text returned (chunks,
evidence sentences, titles) goes through :func:`guards.policy.apply_retrieved` and carries its verdict.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from pydantic import ValidationError

import core  # noqa: F401  (offline switches before chromadb is imported)
from core.errors import InvalidInput, NotFound, Unavailable
from core.schemas import GuardVerdict
from core.settings import Settings
from core.validation import (
    check_collection_name,
    check_text,
    decode_cursor,
    encode_cursor,
)
from graph import communities as comm
from graph import search as gsearch
from graph.canonical import normalize
from graph.documents import Prepared, build_records, check_doc_id, prepare
from graph.extract import load_nlp
from graph.schemas import (
    ChunkHit,
    CommunitiesResult,
    CommunityHit,
    CommunityInfo,
    DeleteResult,
    DocumentOutcome,
    EntityDetail,
    EntityHit,
    EntityInfo,
    EntitySearchResult,
    Evidence,
    GlobalSearchResult,
    GraphItem,
    GraphPath,
    GraphStats,
    IngestResult,
    LocalSearchResult,
    Neighbor,
    NeighborsResult,
    PathResult,
    PprResult,
    RankedSentence,
    Relation,
)
from graph.state import (
    COOC,
    ChunkRecord,
    GraphState,
    edge_weight,
    entity_label,
    entity_name,
    entity_surfaces,
)
from graph.store import FileGraphStore, GraphStore
from graph.update import Changes, replace_documents
from guards import injection
from guards import policy as guard_policy

__all__ = ["GraphEngine"]

log = logging.getLogger("guardrag.graph")

_MAX_QUERY_CHARS = 4000
_CHROMA_BATCH = 2000
_DESC_SENTENCE_CHARS = 300
_SEARCH_POOL = 200  # entity_search candidates before paging


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 3)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


@dataclass
class _Graph:
    """One open graph and its lazily rebuilt derived structures."""

    name: str
    store: GraphStore
    state: GraphState
    stamp: Any = None
    version: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    def invalidate(self) -> None:
        self.version += 1
        self.cache.clear()


class GraphEngine:
    """Knowledge graphs with offline extraction, incremental writes and four search modes.

    Thread-safe: writes are serialised (in-process lock plus a file lock shared by every process
    on the data dir); a graph another process changed is reloaded on the next call.
    """

    def __init__(self, settings: Settings, *, embedder: Any | None = None, nlp: Any | None = None,
                 subject_weight: float = gsearch.SUBJECT_WEIGHT):
        if not (isinstance(subject_weight, int | float) and math.isfinite(subject_weight) and subject_weight > 0):
            raise InvalidInput(f"subject_weight must be a finite number > 0; got {subject_weight!r}.")
        self.settings = settings
        self.subject_weight = float(subject_weight)  # PPR: entity-chunk edge weight when the chunk is about it
        self.gs = settings.graph
        self.root = settings.data_dir / "graph"
        self.root.mkdir(parents=True, exist_ok=True)
        self._embedder = embedder
        self._nlp = nlp
        self._client = None
        self._graphs: dict[str, _Graph] = {}
        self._lock = threading.RLock()
        self._title_scans: dict[str, guard_policy.RetrievedScan] = {}
        self.repairs: list[str] = []

    # ---------------------------------------------------------------- plumbing
    @property
    def embedder(self):
        if self._embedder is None:
            from core.embedder import get_embedder

            self._embedder = get_embedder(self.settings.model_dir, threads=self.settings.embed_threads)
        return self._embedder

    @property
    def nlp(self):
        if self._nlp is None:
            self._nlp = load_nlp(self.gs.spacy_model)
        return self._nlp

    def _chroma(self):
        if self._client is None:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            path = self.root / "chroma"
            try:
                path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False))
            except Exception as exc:
                raise Unavailable(f"cannot open the entity index (Chroma) at {path}: {exc}") from exc
        return self._client

    def _entity_col(self, name: str):
        from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

        # Chroma's default function is recorded so plain Chroma clients can query the collection;
        # guardrag always passes its own (identical) vectors.
        return self._chroma().get_or_create_collection(
            name, embedding_function=ONNXMiniLM_L6_V2(), configuration={"hnsw": {"space": "cosine"}},
            metadata={"guardrag_graph": 1},
        )

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        with self._lock, open(self.root / "write.lock", "a+") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - non-POSIX
                pass
            yield

    def _name(self, collection: str | None) -> str:
        return check_collection_name(collection or self.gs.collection)

    def _store_for(self, name: str) -> FileGraphStore:
        return FileGraphStore(self.root / "graphs" / f"{name}.json.gz")

    def _open(self, collection: str | None, *, create: bool = False) -> _Graph:
        """The loaded graph, reloaded when another process committed since; NotFound if absent."""
        name = self._name(collection)
        with self._lock:
            g = self._graphs.get(name)
            if g is not None:
                stamp = getattr(g.store, "stamp", lambda: None)()
                if stamp != g.stamp:
                    g.state, g.stamp = g.store.load(), stamp
                    g.invalidate()
                return g
            store = self._store_for(name)
            if not store.exists() and not create:
                known = self.collections()
                raise NotFound(f"graph {name!r} does not exist; ingest documents into it first"
                               + (f" (existing graphs: {', '.join(known)})." if known else "."))
            if store.cleaned:
                self.repairs.append(f"{name}: removed {len(store.cleaned)} half-written snapshot file(s)")
            try:
                state = store.load()
            except (OSError, ValueError) as exc:
                raise Unavailable(f"cannot read graph {name!r} at {store.where()}: {exc}") from exc
            g = _Graph(name=name, store=store, state=state, stamp=store.stamp())
            self._graphs[name] = g
            if store.exists():
                self._sync_entities(g, None)
            return g

    def collections(self) -> list[str]:
        """Names of the graphs on this data dir."""
        folder = self.root / "graphs"
        return sorted(p.name.removesuffix(".json.gz") for p in folder.glob("*.json.gz")) if folder.exists() else []

    # ---------------------------------------------------------------- derived structures
    def _projection(self, g: _Graph) -> nx.Graph:
        if "proj" not in g.cache:
            g.cache["proj"] = gsearch.projection(g.state.graph)
        return g.cache["proj"]

    def _names(self, g: _Graph) -> dict[str, str]:
        if "names" not in g.cache:
            g.cache["names"] = gsearch.name_index(g.state.graph, g.state.aliases)
        return g.cache["names"]

    def _bipartite(self, g: _Graph) -> gsearch.BipartiteIndex:
        if "bip" not in g.cache:
            subjects = gsearch.chunk_subjects(g.state.graph, g.state.docs, g.state.chunks, g.state.aliases)
            g.cache["bip"] = gsearch.BipartiteIndex.build(g.state.graph, self._projection(g), g.state.chunks,
                                                          subjects=subjects, subject_weight=self.subject_weight)
        return g.cache["bip"]

    def _communities(self, g: _Graph) -> list[list[comm.Community]]:
        """Louvain levels with summaries, recomputed lazily after a write."""
        if "comms" not in g.cache:
            h = self._projection(g)
            levels = comm.detect(h, resolution=self.gs.community_resolution, seed=self.gs.community_seed,
                                 levels=self.gs.community_levels, min_size=self.gs.min_community_size)
            for level in levels:
                for c in level:
                    comm.summarize(g.state.graph, h, c)
            g.cache["comms"] = levels
        return g.cache["comms"]

    @staticmethod
    def _stopwords() -> frozenset[str]:
        from spacy.lang.en.stop_words import STOP_WORDS

        return frozenset(STOP_WORDS)

    # ---------------------------------------------------------------- entity index (Chroma)
    def _description(self, g: _Graph, key: str) -> str:
        """What is embedded for an entity: name, label, aliases and its first supporting sentence."""
        data = g.state.graph.nodes[key]
        name, label = entity_name(data), entity_label(data)
        aliases = [s for s, _ in entity_surfaces(data).most_common(4) if s != name][:3]
        sentence = ""
        for doc_id in sorted(data["docs"]):
            for chunk_id, s, e, in_title in data["docs"][doc_id]["ev"]:
                chunk = g.state.chunks.get(chunk_id)
                if not in_title and chunk is not None:
                    sentence = chunk.text[s:e][:_DESC_SENTENCE_CHARS]
                    break
            if sentence:
                break
        head = f"{name} ({label.lower()})" + (f", also {', '.join(aliases)}" if aliases else "")
        return f"{head}: {sentence}" if sentence else head

    def _sync_entities(self, g: _Graph, keys: set[str] | None) -> None:
        """Make the entity index match the graph for ``keys`` (None: every entity, only when the
        index's generation differs from the snapshot's)."""
        col = self._entity_col(g.name)
        graph = g.state.graph
        if keys is None:
            if (col.metadata or {}).get("graph_gen") == g.state.generation:
                return
            existing: dict[str, str] = {}
            offset = 0
            while True:
                got = col.get(include=["metadatas"], limit=10_000, offset=offset)
                existing.update({i: (m or {}).get("desc_hash", "") for i, m in zip(got["ids"], got["metadatas"], strict=True)})
                if len(got["ids"]) < 10_000:
                    break
                offset += 10_000
            keys = set(existing) | set(graph.nodes)
            full = True
        else:
            existing = {}
            ids = sorted(keys)
            for start in range(0, len(ids), _CHROMA_BATCH):
                got = col.get(ids=ids[start : start + _CHROMA_BATCH], include=["metadatas"])
                existing.update({i: (m or {}).get("desc_hash", "") for i, m in zip(got["ids"], got["metadatas"], strict=True)})
            full = False
        gone = sorted(k for k in keys if k not in graph and k in existing)
        todo = []
        for k in sorted(keys):
            if k in graph:
                desc = self._description(g, k)
                if existing.get(k) != _sha(desc):
                    todo.append((k, desc))
        for start in range(0, len(gone), _CHROMA_BATCH):
            col.delete(ids=gone[start : start + _CHROMA_BATCH])
        for start in range(0, len(todo), _CHROMA_BATCH):
            part = todo[start : start + _CHROMA_BATCH]
            vecs = self.embedder.embed([d for _, d in part])
            col.upsert(ids=[k for k, _ in part], embeddings=vecs, documents=[d for _, d in part],
                       metadatas=[{"name": entity_name(graph.nodes[k]), "label": entity_label(graph.nodes[k]),
                                   "desc_hash": _sha(d)} for k, d in part])
        col.modify(metadata={**(col.metadata or {}), "graph_gen": g.state.generation or ""})
        if full and (gone or todo):
            self.repairs.append(f"{g.name}: re-synced the entity index (+{len(todo)} / -{len(gone)})")

    # ---------------------------------------------------------------- guards
    def _scan(self, chunk: ChunkRecord) -> guard_policy.RetrievedScan:
        s = chunk.scan
        if s and s.get("scanner") == injection.SCANNER_VERSION and s.get("content_hash") == chunk.content_hash:
            try:
                return guard_policy.RetrievedScan(**s)
            except ValidationError:
                pass
        scan = guard_policy.scan_retrieved(chunk.text, chunk.content_hash)  # no scan, or another scanner's
        chunk.scan = scan.model_dump()  # kept in memory; persisted with the next commit
        return scan

    def _guard(self, text: str, scan: guard_policy.RetrievedScan | None, start: int = 0) -> tuple[str | None, GuardVerdict]:
        """Apply the retrieved-text policy to ``text`` = a slice from ``start`` of the scanned text."""
        if not self.settings.guards.enabled:
            return text, GuardVerdict()
        if scan is None:
            scan = guard_policy.scan_retrieved(text)
        end = start + len(text)
        findings = [f.model_copy(update={"start": max(0, f.start - start), "end": min(len(text), f.end - start)})
                    for f in scan.findings if f.end > start and f.start < end]
        sub = scan.model_copy(update={"findings": findings})
        return guard_policy.apply_retrieved(text, sub, self.settings.guards)

    def _title_scan(self, title: str) -> guard_policy.RetrievedScan:
        key = _sha(title)
        scan = self._title_scans.get(key)
        if scan is None or scan.scanner != injection.SCANNER_VERSION:
            scan = self._title_scans[key] = guard_policy.scan_retrieved(title, key)
        return scan

    def _evidence(self, g: _Graph, doc_id: str, ev: Sequence[Any]) -> Evidence:
        chunk_id, s, e = ev[0], ev[1], ev[2]
        in_title = bool(ev[3]) if len(ev) > 3 else False
        if in_title:
            title = g.state.docs[doc_id].title or ""
            text, verdict = self._guard(title, self._title_scan(title))
        else:
            chunk = g.state.chunks[chunk_id]
            text, verdict = self._guard(chunk.text[s:e], self._scan(chunk), s)
        return Evidence(doc_id=doc_id, chunk_id=chunk_id, start=s, end=e, in_title=in_title, text=text, guard=verdict)

    def _chunk_hit(self, g: _Graph, chunk_id: str, score: float, entities: list[str]) -> ChunkHit:
        chunk = g.state.chunks[chunk_id]
        text, verdict = self._guard(chunk.text, self._scan(chunk))
        return ChunkHit(chunk_id=chunk_id, doc_id=chunk.doc_id, title=g.state.docs[chunk.doc_id].title, text=text,
                        guard=verdict, score=round(score, 8), entities=entities[:10])

    # ---------------------------------------------------------------- views
    def _info(self, g: _Graph, key: str) -> EntityInfo:
        data = g.state.graph.nodes[key]
        sf = entity_surfaces(data)
        name = entity_name(data)
        return EntityInfo(
            id=key, name=name, label=entity_label(data),
            aliases=[s for s, _ in sorted(sf.items(), key=lambda kv: (-kv[1], kv[0])) if s != name][:10],
            mentions=sum(sf.values()), documents=len(data["docs"]), chunks=len(gsearch.entity_chunks(g.state.graph, key)),
            degree=self._projection(g).degree(key),
        )

    def _relation(self, g: _Graph, u: str, v: str, rel: str, evidence: int) -> Relation:
        graph = g.state.graph
        data = graph.edges[u, v, rel]
        evs = [(d, ev) for d in sorted(data["docs"]) for ev in data["docs"][d]]
        return Relation(
            source=u, source_name=entity_name(graph.nodes[u]), target=v, target_name=entity_name(graph.nodes[v]),
            relation=rel, kind=data["kind"], weight=edge_weight(data),
            evidence=[self._evidence(g, d, ev) for d, ev in evs[:evidence]], evidence_total=len(evs),
        )

    def _edges_of(self, g: _Graph, key: str) -> list[tuple[str, str, str]]:
        """Every edge at ``key``: parsed relations first, then by weight."""
        graph = g.state.graph
        edges = [(u, v, k) for u, v, k in graph.out_edges(key, keys=True)]
        edges += [(u, v, k) for u, v, k in graph.in_edges(key, keys=True)]
        return sorted(edges, key=lambda e: (e[2] == COOC, -edge_weight(graph.edges[e]), e))

    def _best_edge(self, g: _Graph, a: str, b: str) -> tuple[str, str, str]:
        graph = g.state.graph
        edges = [(a, b, k) for k in (graph[a][b] if graph.has_edge(a, b) else {})]
        edges += [(b, a, k) for k in (graph[b][a] if graph.has_edge(b, a) else {})]
        return min(edges, key=lambda e: (e[2] == COOC, -edge_weight(graph.edges[e]), e))

    def _resolve_entity(self, g: _Graph, ref: str, what: str = "entity") -> str:
        check_text(ref, what)
        graph = g.state.graph
        if ref in graph:
            return ref
        key = g.state.aliases.resolve(normalize(ref))
        if key in graph:
            return key
        hit = self._names(g).get(normalize(ref))
        if hit is not None:
            return hit
        close = difflib.get_close_matches(normalize(ref), list(graph.nodes), n=3, cutoff=0.6)
        hint = f" Closest ids: {', '.join(repr(c) for c in close)}." if close else ""
        raise NotFound(f"{what} {ref!r} is not in graph {g.name!r}.{hint} Use entity_search to find entity ids.")

    # ---------------------------------------------------------------- checks
    def _check_query(self, query: str) -> str:
        if not isinstance(query, str):
            raise InvalidInput("query must be a string.")
        check_text(query, "query")
        if len(query) > _MAX_QUERY_CHARS:
            raise InvalidInput(f"query has {len(query)} characters; the limit is {_MAX_QUERY_CHARS}.")
        return query

    def _check_k(self, k: int, what: str = "k") -> int:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.gs.max_k:
            raise InvalidInput(f"{what} must be an integer between 1 and {self.gs.max_k}; got {k!r}. "
                               "Use the cursor for more results.")
        return k

    def _check_hops(self, hops: int | None) -> int:
        hops = self.gs.hops if hops is None else hops
        if not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= self.gs.max_hops:
            raise InvalidInput(f"hops must be between 0 and {self.gs.max_hops}; got {hops!r}.")
        return hops

    # ---------------------------------------------------------------- writes
    def ingest_texts(self, items: Sequence[GraphItem | Mapping[str, Any]], collection: str | None = None) -> IngestResult:
        """Add or replace documents. All items are validated before anything changes; an unchanged
        document (same text, title and metadata) is skipped. O(tokens of the changed documents)."""
        started = time.perf_counter()
        name = self._name(collection)
        if not items:
            raise InvalidInput("nothing to ingest: give at least one document.")
        prepared: list[Prepared] = []
        seen: set[str] = set()
        limit = self.settings.retrieval.max_text_chars
        for n, raw in enumerate(items):
            label = f"document {n}" if len(items) > 1 else "document"
            try:
                item = raw if isinstance(raw, GraphItem) else GraphItem.model_validate(raw)
            except ValidationError as exc:
                raise InvalidInput(f"{label} is malformed: {exc.errors()[0]['msg']} at "
                                   f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])}.") from None
            size = len(item.text) + sum(len(c.text) for c in item.chunks or [])
            if size > limit:
                raise InvalidInput(f"{label} has {size:,} characters; the limit is {limit:,} "
                                   "(GUARDRAG_RETRIEVAL__MAX_TEXT_CHARS). Split it into several documents.")
            p = prepare(item, self.gs.chunk_chars, label)
            if p.doc_id in seen:
                raise InvalidInput(f"doc_id {p.doc_id!r} appears twice in one call.")
            seen.add(p.doc_id)
            prepared.append(p)
        with self._write_lock():
            g = self._open(name, create=True)
            state = g.state
            owners: dict[str, str] = {}
            for p in prepared:
                for chunk_id, _ in p.chunks:
                    old = state.chunks.get(chunk_id)
                    other = owners.setdefault(chunk_id, p.doc_id)
                    if (old is not None and old.doc_id != p.doc_id) or other != p.doc_id:
                        owner = old.doc_id if old is not None and old.doc_id != p.doc_id else other
                        raise InvalidInput(f"chunk id {chunk_id!r} of {p.doc_id!r} already belongs to document "
                                           f"{owner!r}; chunk ids must be unique across documents.")
            todo = [p for p in prepared if p.doc_id not in state.docs or state.docs[p.doc_id].doc_hash != p.doc_hash]
            t = time.perf_counter()
            records = build_records(self.nlp, todo, batch_size=self.gs.batch_size, scan=self.settings.guards.enabled)
            extraction = time.perf_counter() - t
            outcomes = []
            done = {r.doc_id: r for r, _ in records}
            for p in prepared:
                rec = done.get(p.doc_id)
                if rec is None:
                    old = state.docs[p.doc_id]
                    outcomes.append(DocumentOutcome(doc_id=p.doc_id, status="unchanged", chunks=len(old.chunk_ids),
                                                    mentions=len(old.extraction.mentions),
                                                    relations=len(old.extraction.triples)))
                else:
                    outcomes.append(DocumentOutcome(
                        doc_id=p.doc_id, status="replaced" if p.doc_id in state.docs else "added",
                        chunks=len(rec.chunk_ids), mentions=len(rec.extraction.mentions),
                        relations=len(rec.extraction.triples)))
            if records:
                changes = replace_documents(state, add=records)
                self._commit(g, changes)
        count = {s: sum(o.status == s for o in outcomes) for s in ("added", "replaced", "unchanged")}
        return IngestResult(collection=name, documents=outcomes, **count, entities=g.state.graph.number_of_nodes(),
                            edges=g.state.graph.number_of_edges(), seconds=round(time.perf_counter() - started, 3),
                            extraction_seconds=round(extraction, 3))

    def _commit(self, g: _Graph, changes: Changes) -> None:
        """Persist the state (atomically), then bring the entity index up to date. A failed commit
        reloads the last good state, so memory never runs ahead of the disk."""
        g.state.generation = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        try:
            g.store.commit(g.state, changes)
        except BaseException:
            g.state = g.store.load()
            g.stamp = getattr(g.store, "stamp", lambda: None)()
            g.invalidate()
            raise
        g.stamp = getattr(g.store, "stamp", lambda: None)()
        g.invalidate()
        self._sync_entities(g, changes.nodes | changes.nodes_removed)

    def delete_document(self, doc_id: str, collection: str | None = None) -> DeleteResult:
        """Remove a document and every node and edge no other document supports. O(its contributions)."""
        check_doc_id(doc_id)
        with self._write_lock():
            g = self._open(collection)
            rec = g.state.docs.get(doc_id)
            if rec is None:
                raise NotFound(f"document {doc_id!r} is not in graph {g.name!r}.")
            changes = replace_documents(g.state, remove=[doc_id])
            self._commit(g, changes)
        return DeleteResult(collection=g.name, doc_id=doc_id, chunks_deleted=len(rec.chunk_ids),
                            entities_removed=len(changes.nodes_removed), edges_removed=len(changes.edges_removed))

    # ---------------------------------------------------------------- entity lookup
    def _by_meaning(self, g: _Graph, vec: np.ndarray, n: int) -> list[tuple[str, float]]:
        col = self._entity_col(g.name)
        count = col.count()
        if not count:
            return []
        res = col.query(query_embeddings=vec[None, :], n_results=min(n, count), include=["distances"])
        return [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)
                if i in g.state.graph]

    def _question_entities(self, g: _Graph, query: str, timings: dict[str, float]) -> dict[str, tuple[float, set[str]]]:
        """Entities of a question: named in it (score 1) or close in meaning (cosine >= min_similarity)."""
        t = time.perf_counter()
        found: dict[str, tuple[float, set[str]]] = {}
        for key in gsearch.match_names(query, self._names(g), self._stopwords()):
            found[key] = (1.0, {"name"})
        timings["names"] = _ms(t)
        t = time.perf_counter()
        vec = self.embedder.embed_one(query)
        timings["embed"] = _ms(t)
        t = time.perf_counter()
        for key, sim in self._by_meaning(g, vec, self.gs.entity_candidates):
            if sim >= self.gs.min_similarity:
                score, how = found.get(key, (0.0, set()))
                found[key] = (max(score, sim), how | {"embedding"})
        timings["entities"] = _ms(t)
        return found

    def _hit(self, g: _Graph, key: str, score: float, how: set[str]) -> EntityHit:
        order = ("name", "embedding", "expansion")
        return EntityHit(**self._info(g, key).model_dump(), score=round(score, 6),
                         matched_by=[m for m in order if m in how])

    def entity_search(self, query: str, k: int = 10, cursor: str | None = None, collection: str | None = None
                      ) -> EntitySearchResult:
        """Entities by name (exact, alias, or containing the query's words) and by meaning (cosine to
        their descriptions), best first; pages of ``k`` through at most 200 candidates."""
        self._check_query(query)
        self._check_k(k)
        offset = decode_cursor(cursor)
        g = self._open(collection)
        graph = g.state.graph
        cand: dict[str, tuple[float, set[str]]] = {}
        q = normalize(query)
        exact = self._names(g).get(q) or (g.state.aliases.resolve(q) if g.state.aliases.resolve(q) in graph else None)
        if exact:
            cand[exact] = (1.0, {"name"})
        for key in gsearch.match_names(query, self._names(g), self._stopwords()):
            cand.setdefault(key, (0.9, {"name"}))
        if len(q) >= 3:
            padded = f" {q} "
            for key in graph.nodes:
                if key not in cand and padded in f" {key} ":
                    cand[key] = (0.5 + 0.4 * len(q) / len(key), {"name"})
        for key, sim in self._by_meaning(g, self.embedder.embed_one(query), _SEARCH_POOL):
            score, how = cand.get(key, (0.0, set()))
            cand[key] = (max(score, sim) + (0.05 if score and "embedding" not in how else 0.0), how | {"embedding"})
        ranked = sorted(cand.items(), key=lambda kv: (-kv[1][0], kv[0]))[:_SEARCH_POOL]
        page = ranked[offset : offset + k]
        end = offset + len(page)
        return EntitySearchResult(collection=g.name, query=query, hits=[self._hit(g, key, s, how) for key, (s, how) in page],
                                  total=len(ranked), next_cursor=encode_cursor(end) if end < len(ranked) else None)

    def entity(self, entity: str, limit: int = 20, cursor: str | None = None, collection: str | None = None) -> EntityDetail:
        """One entity: summary, a page of its relations (parsed relations first, then by weight) and
        its first supporting sentences (capped at ``max_evidence``)."""
        self._check_k(limit, "limit")
        offset = decode_cursor(cursor)
        g = self._open(collection)
        key = self._resolve_entity(g, entity)
        info = self._info(g, key)
        edges = self._edges_of(g, key)
        page = edges[offset : offset + limit]
        rels = [self._relation(g, u, v, r, 1) for u, v, r in page]
        data = g.state.graph.nodes[key]
        evs = [(d, ev) for d in sorted(data["docs"]) for ev in data["docs"][d]["ev"]]
        cap = self.gs.max_evidence
        strongest = [f"{r.source_name} -{r.relation}-> {r.target_name}" for r in
                     (self._relation(g, u, v, rr, 0) for u, v, rr in edges[:5] if rr != COOC)]
        description = f"{info.name} ({info.label}), mentioned {info.mentions} times in {info.documents} document(s)"
        if info.aliases:
            description += f"; also written {', '.join(info.aliases[:5])}"
        if strongest:
            description += ". Relations: " + "; ".join(strongest)
        end = offset + len(page)
        return EntityDetail(collection=g.name, entity=info, description=description + ".", relations=rels,
                            relations_total=len(edges), next_cursor=encode_cursor(end) if end < len(edges) else None,
                            sources=[self._evidence(g, d, ev) for d, ev in evs[:cap]], sources_total=len(evs),
                            sources_capped=len(evs) > cap)

    def neighbors(self, entity: str, hops: int = 1, limit: int = 20, cursor: str | None = None,
                  collection: str | None = None) -> NeighborsResult:
        """Entities within ``hops`` of an entity, nearest and most strongly connected first, each with
        the edge it was reached by. The expansion keeps each node's 50 strongest edges and stops at
        500 entities (``capped``)."""
        self._check_k(limit, "limit")
        if not isinstance(hops, int) or isinstance(hops, bool) or not 1 <= hops <= self.gs.max_hops:
            raise InvalidInput(f"hops must be between 1 and {self.gs.max_hops}; got {hops!r}.")
        offset = decode_cursor(cursor)
        g = self._open(collection)
        key = self._resolve_entity(g, entity)
        max_nodes = 501
        found = gsearch.expand(self._projection(g), {key: 1.0}, hops, per_node=50, max_nodes=max_nodes)
        ranked = sorted(((k, v) for k, v in found.items() if k != key), key=lambda kv: (kv[1][1], -kv[1][0], kv[0]))
        page = ranked[offset : offset + limit]
        out = []
        for k, (_, hop, parent) in page:
            u, v, r = self._best_edge(g, parent, k)
            out.append(Neighbor(entity=self._info(g, k), hop=hop, via=self._relation(g, u, v, r, 1)))
        end = offset + len(page)
        return NeighborsResult(collection=g.name, entity=self._info(g, key), hops=hops, neighbors=out, total=len(ranked),
                               next_cursor=encode_cursor(end) if end < len(ranked) else None,
                               capped=len(found) >= max_nodes)

    def path(self, source: str, target: str, k: int = 1, max_length: int | None = None,
             collection: str | None = None) -> PathResult:
        """The ``k`` shortest paths (fewest edges) between two entities, each step with its strongest
        edge (parsed relations before co-occurrence) and that edge's evidence sentence."""
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.gs.max_paths:
            raise InvalidInput(f"k must be between 1 and {self.gs.max_paths}; got {k!r}.")
        max_length = self.gs.max_path_length if max_length is None else max_length
        if not isinstance(max_length, int) or not 1 <= max_length <= self.gs.max_path_length:
            raise InvalidInput(f"max_length must be between 1 and {self.gs.max_path_length}; got {max_length!r}.")
        g = self._open(collection)
        s = self._resolve_entity(g, source, "source")
        t = self._resolve_entity(g, target, "target")
        paths, capped = gsearch.k_shortest_paths(self._projection(g), s, t, k, max_length)
        out = []
        for p in paths:
            steps = [self._relation(g, *self._best_edge(g, a, b), 1) for a, b in itertools.pairwise(p)]
            out.append(GraphPath(entities=[self._info(g, n) for n in p], steps=steps, length=len(p) - 1))
        return PathResult(collection=g.name, source=self._info(g, s), target=self._info(g, t), paths=out, capped=capped)

    # ---------------------------------------------------------------- communities
    def _community_info(self, g: _Graph, c: comm.Community) -> CommunityInfo:
        return CommunityInfo(
            id=c.id, level=c.level, size=len(c.members), parent=c.parent,
            top_entities=[self._info(g, k) for k in c.top_entities],
            top_relations=comm.relation_strings(g.state.graph, c),
            sentences=[self._evidence(g, d, [ch, s, e]) for d, ch, s, e in c.sentences], summary=c.summary,
        )

    def communities(self, level: int = 0, limit: int = 20, cursor: str | None = None,
                    collection: str | None = None) -> CommunitiesResult:
        """Communities of one level (0 = coarsest), largest first, with their offline summaries.
        Computed on the first call after a write (Louvain over the whole graph), then cached."""
        self._check_k(limit, "limit")
        offset = decode_cursor(cursor)
        g = self._open(collection)
        levels = self._communities(g)
        if not levels:
            return CommunitiesResult(collection=g.name, level=level, levels=0, communities=[], total=0)
        if not isinstance(level, int) or not 0 <= level < len(levels):
            raise InvalidInput(f"level must be between 0 and {len(levels) - 1} (0 is the coarsest); got {level!r}.")
        comms = levels[level]
        page = comms[offset : offset + limit]
        end = offset + len(page)
        return CommunitiesResult(collection=g.name, level=level, levels=len(levels),
                                 communities=[self._community_info(g, c) for c in page], total=len(comms),
                                 next_cursor=encode_cursor(end) if end < len(comms) else None)

    # ---------------------------------------------------------------- search
    def local_search(self, query: str, k: int = 10, hops: int | None = None, cursor: str | None = None,
                     collection: str | None = None) -> LocalSearchResult:
        """Entities matched by name and by meaning, expanded ``hops`` steps, then the chunks that
        support them ranked by summed entity score x specificity (LightRAG's low-level mode).
        Returns a page of ``k`` chunks, the top 20 entities and the 10 strongest relations among them."""
        t0 = time.perf_counter()
        self._check_query(query)
        self._check_k(k)
        hops = self._check_hops(hops)
        offset = decode_cursor(cursor)
        g = self._open(collection)
        timings: dict[str, float] = {}
        seeds = self._question_entities(g, query, timings)
        t = time.perf_counter()
        found = gsearch.expand(self._projection(g), {key: s for key, (s, _) in seeds.items()}, hops, per_node=10,
                               max_nodes=100)
        scores = {key: s for key, (s, _, _) in found.items()}
        ranked = gsearch.rank_chunks(g.state.graph, scores, max(1, len(g.state.chunks)))
        timings["rank"] = _ms(t)
        t = time.perf_counter()
        page = ranked[offset : offset + k]
        chunks = [self._chunk_hit(g, c, s, ents) for c, s, ents in page]
        top = sorted(found.items(), key=lambda kv: (-kv[1][0], kv[0]))[:20]
        entities = [self._hit(g, key, s, seeds.get(key, (0, {"expansion"}))[1]) for key, (s, _, _) in top]
        keys = {key for key, _ in top}
        graph = g.state.graph
        edges = sorted({(u, v, r) for u in keys for _, v, r in graph.out_edges(u, keys=True) if v in keys},
                       key=lambda e: (e[2] == COOC, -edge_weight(graph.edges[e]), e))[:10]
        relations = [self._relation(g, u, v, r, 1) for u, v, r in edges]
        timings["read"] = _ms(t)
        timings["total"] = _ms(t0)
        end = offset + len(page)
        return LocalSearchResult(collection=g.name, query=query, entities=entities, relations=relations, chunks=chunks,
                                 total=len(ranked), next_cursor=encode_cursor(end) if end < len(ranked) else None,
                                 timings_ms=timings)

    def ppr_search(self, query: str, k: int = 10, cursor: str | None = None,
                   seed_chunks: Mapping[str, float] | None = None, collection: str | None = None,
                   hop_chunks: Mapping[str, float] | None = None) -> PprResult:
        """Personalised PageRank over the entity-chunk graph (HippoRAG), restarting at the question's
        entities (weighted by specificity) and, optionally, at ``seed_chunks`` (chunk id -> weight,
        e.g. a retriever's hits). Returns chunks by PageRank score; an empty list when nothing of the
        question is in the graph. O(50 x (entities + chunks + edges)) per call.

        ``hop_chunks`` (chunk id -> weight, e.g. ``1 / rank`` of a retriever's first hits) adds a second
        hop, iterative retrieval without an LLM: the walk also restarts at every entity those chunks
        mention, with the chunk's weight (on the scale of a question entity named outright, 1), so the
        passages *about* the entities the first hits name (the bridge of a multi-hop question) surface.
        Unlike ``seed_chunks`` it does not restart at the hits themselves (only at what they name,
        their own subject included)."""
        t0 = time.perf_counter()
        self._check_query(query)
        self._check_k(k)
        offset = decode_cursor(cursor)
        for what, given in (("seed_chunks", seed_chunks), ("hop_chunks", hop_chunks)):
            if given is not None and (not isinstance(given, Mapping) or any(
                    not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w) or w < 0
                    for w in given.values())):
                raise InvalidInput(f"{what} must map chunk ids to finite weights >= 0.")
        g = self._open(collection)
        timings: dict[str, float] = {}
        seeds = self._question_entities(g, query, timings)
        t = time.perf_counter()
        bip = self._bipartite(g)
        timings["index"] = _ms(t)
        t = time.perf_counter()
        restart = {key: s for key, (s, _) in seeds.items()}
        hop = bip.hop_seeds(hop_chunks) if hop_chunks else {}
        for key, s in hop.items():
            restart[key] = restart.get(key, 0.0) + s
        ranked = bip.chunk_scores(restart, seed_chunks, damping=self.gs.ppr_damping)
        timings["pagerank"] = _ms(t)
        page = ranked[offset : offset + k]
        seed_keys = set(restart)
        hits = []
        resolve = g.state.aliases.resolve
        for c, s in page:
            mentions = g.state.docs[g.state.chunks[c].doc_id].extraction.mentions
            ents = sorted({resolve(m.key) for m in mentions if m.chunk_id == c} & seed_keys)
            hits.append(self._chunk_hit(g, c, s, ents))
        top = sorted(seeds.items(), key=lambda kv: (-kv[1][0], kv[0]))[:20]
        end = offset + len(page)
        timings["total"] = _ms(t0)
        return PprResult(collection=g.name, query=query, seeds=[self._hit(g, key, s, how) for key, (s, how) in top],
                         chunks=hits, total=len(ranked), next_cursor=encode_cursor(end) if end < len(ranked) else None,
                         timings_ms=timings)

    def global_search(self, query: str, k: int = 5, communities: int = 3, level: int = 0,
                      collection: str | None = None) -> GlobalSearchResult:
        """GraphRAG-style global search, offline: rank the community summaries of ``level`` against
        the question (cosine), then map over the best ``communities`` (score each one's representative
        and relation sentences against the question) and reduce to the ``k`` best sentences."""
        self._check_query(query)
        self._check_k(k)
        if not isinstance(communities, int) or not 1 <= communities <= 10:
            raise InvalidInput(f"communities must be between 1 and 10; got {communities!r}.")
        g = self._open(collection)
        levels = self._communities(g)
        if not levels:
            return GlobalSearchResult(collection=g.name, query=query, level=level, communities=[], sentences=[],
                                      capped=False)
        if not isinstance(level, int) or not 0 <= level < len(levels):
            raise InvalidInput(f"level must be between 0 and {len(levels) - 1} (0 is the coarsest); got {level!r}.")
        comms = levels[level]
        vkey = f"summary_vecs:{level}"
        if vkey not in g.cache:
            g.cache[vkey] = self.embedder.embed([c.summary for c in comms])
        qvec = self.embedder.embed_one(query)
        sims = g.cache[vkey] @ qvec if len(comms) else np.zeros(0)
        order = np.argsort(-sims, kind="stable")[:communities]
        best = [(comms[i], float(sims[i])) for i in order]
        graph = g.state.graph
        cands: dict[tuple[str, str, int, int], tuple[str, float]] = {}
        for c, cs in best:  # map: each community's candidate sentences
            sents = list(c.sentences)
            for u, r, v, _ in c.top_relations:
                d, evs = min(graph.edges[u, v, r]["docs"].items())
                sents.append((d, *evs[0]))
            for s in sents:
                cands.setdefault(tuple(s), (c.id, cs))
        keys = list(cands)
        texts = [g.state.chunks[ch].text[s:e] for _, ch, s, e in keys]
        scores = self.embedder.embed(texts) @ qvec if texts else np.zeros(0)
        ranked = sorted(range(len(keys)), key=lambda i: (-(scores[i] + 0.5 * cands[keys[i]][1]), keys[i]))
        sentences = []
        for i in ranked[:k]:  # reduce
            d, ch, s, e = keys[i]
            ev = self._evidence(g, d, [ch, s, e])
            sentences.append(RankedSentence(**ev.model_dump(), score=round(float(scores[i] + 0.5 * cands[keys[i]][1]), 6),
                                            community=cands[keys[i]][0]))
        return GlobalSearchResult(
            collection=g.name, query=query, level=level,
            communities=[CommunityHit(id=c.id, level=c.level, size=len(c.members), score=round(s, 6), summary=c.summary)
                         for c, s in best],
            sentences=sentences, capped=len(comms) > communities or len(keys) > k,
        )

    # ---------------------------------------------------------------- stats
    def stats(self, collection: str | None = None) -> GraphStats:
        g = self._open(collection)
        graph = g.state.graph
        kinds = [d["kind"] for _, _, d in graph.edges(data=True)]
        return GraphStats(
            collection=g.name, documents=len(g.state.docs), chunks=len(g.state.chunks), entities=graph.number_of_nodes(),
            edges=graph.number_of_edges(), relations=sum(k == "relation" for k in kinds),
            cooccurrences=sum(k == "cooccurrence" for k in kinds), aliases=len(g.state.aliases),
            entity_index=self._entity_col(g.name).count(), communities_ready="comms" in g.cache,
            store=g.store.where(), generation=g.state.generation, repairs=list(self.repairs),
        )

    def warm_up(self, collection: str | None = None) -> None:
        """Load the models and build the derived structures now rather than on the first search."""
        self.embedder.embed(["warm up"])
        with contextlib.suppress(NotFound):
            g = self._open(collection)
            self._names(g)
            self._projection(g)
            self._bipartite(g)
