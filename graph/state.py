"""The in-memory state of one graph: the networkx ``MultiDiGraph`` plus the records it is built from.

Graph layout (what every algorithm in ``graph/`` reads):

- a **node** per entity, keyed by its canonical key, with ``docs = {doc_id: {"ev": [[chunk_id, start,
  end, in_title], ...], "sf": {surface: count}, "lb": {label: count}}}``: each document's support;
- an **edge** ``u -> v`` keyed by its relation (``"write"``, ``"born_in"``, ``"co-occurs"``) with
  ``kind`` (``"relation"`` or ``"cooccurrence"``; co-occurrence edges go from the smaller key to the
  larger) and ``docs = {doc_id: [[chunk_id, start, end], ...]}``: the sentences supporting it.

A node or edge exists exactly while some document supports it. Everything else shown to a caller
(name, label, weight) is derived from that support on read, so the graph is a pure function of the
documents it holds, whatever order they came in (:mod:`graph.update` keeps it so).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from graph.canonical import AliasTable
from graph.extract import DocExtraction

__all__ = ["COOC", "ChunkRecord", "DocRecord", "GraphState", "edge_weight", "entity_label", "entity_name"]

COOC = "co-occurs"


@dataclass
class ChunkRecord:
    chunk_id: str
    doc_id: str
    position: int
    text: str
    content_hash: str
    scan: dict[str, Any] | None = None  # guards.policy.RetrievedScan as a dict

    def dump(self) -> dict[str, Any]:
        return self.__dict__


@dataclass
class DocRecord:
    doc_id: str
    doc_hash: str
    title: str | None
    source: str
    metadata: dict[str, Any]
    chunk_ids: list[str]
    extraction: DocExtraction

    def dump(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "extraction"}, "extraction": self.extraction.dump()}

    @classmethod
    def load(cls, data: dict[str, Any]) -> DocRecord:
        return cls(**{**data, "extraction": DocExtraction.load(data["extraction"])})


@dataclass
class GraphState:
    graph: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)
    docs: dict[str, DocRecord] = field(default_factory=dict)
    chunks: dict[str, ChunkRecord] = field(default_factory=dict)
    aliases: AliasTable = field(default_factory=AliasTable)
    generation: str | None = None
    key_docs: dict[str, set[str]] = field(default_factory=dict)  # raw mention key -> docs (derived, not saved)

    def index_doc(self, rec: DocRecord, *, remove: bool = False) -> None:
        for key in {m.key for m in rec.extraction.mentions}:
            if remove:
                docs = self.key_docs.get(key)
                if docs is not None:
                    docs.discard(rec.doc_id)
                    if not docs:
                        del self.key_docs[key]
            else:
                self.key_docs.setdefault(key, set()).add(rec.doc_id)

    def dump(self) -> dict[str, Any]:
        return {
            "format": 1,
            "generation": self.generation,
            "docs": {d: r.dump() for d, r in self.docs.items()},
            "chunks": {c: r.dump() for c, r in self.chunks.items()},
            "aliases": self.aliases.dump(),
            "graph": nx.node_link_data(self.graph, edges="edges"),
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> GraphState:
        if data.get("format") != 1:
            raise ValueError(f"unsupported graph state format {data.get('format')!r}")
        state = cls(
            graph=nx.node_link_graph(data["graph"], directed=True, multigraph=True, edges="edges"),
            docs={d: DocRecord.load(r) for d, r in data["docs"].items()},
            chunks={c: ChunkRecord(**r) for c, r in data["chunks"].items()},
            aliases=AliasTable(data["aliases"]),
            generation=data.get("generation"),
        )
        for rec in state.docs.values():
            state.index_doc(rec)
        return state


def entity_name(data: dict[str, Any]) -> str:
    """The most frequent surface form of a node (ties: the longest, then alphabetical)."""
    sf: Counter[str] = Counter()
    for d in data["docs"].values():
        sf.update(d["sf"])
    return min(sf, key=lambda s: (-sf[s], -len(s), s)) if sf else ""


def entity_surfaces(data: dict[str, Any]) -> Counter[str]:
    sf: Counter[str] = Counter()
    for d in data["docs"].values():
        sf.update(d["sf"])
    return sf


def entity_label(data: dict[str, Any]) -> str:
    """The most frequent label of a node, a named-entity label winning over NOUN / TITLE."""
    lb: Counter[str] = Counter()
    for d in data["docs"].values():
        lb.update(d["lb"])
    if not lb:
        return "NOUN"
    return min(lb, key=lambda s: (s in ("NOUN", "TITLE"), -lb[s], s))


def edge_weight(data: dict[str, Any]) -> int:
    """Number of supporting sentences of an edge."""
    return sum(len(ev) for ev in data["docs"].values())
