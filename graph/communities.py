"""Hierarchical communities and their offline summaries.

:func:`detect` runs networkx's Louvain (``louvain_partitions``: the partition after each level of
the Louvain dendrogram, so levels nest) on the undirected projection and keeps at most ``levels``
of them, coarsest first. :func:`summarize` describes one community without a model: its top
entities by weighted degree inside the community, its strongest parsed relations, and the sentences
that support the most intra-community edges.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import networkx as nx

from graph.state import COOC, edge_weight, entity_name

__all__ = ["Community", "detect", "summarize"]


@dataclass
class Community:
    id: str
    level: int
    members: list[str]
    parent: str | None = None
    top_entities: list[str] = field(default_factory=list)
    top_relations: list[tuple[str, str, str, int]] = field(default_factory=list)  # (u, rel, v, weight)
    sentences: list[tuple[str, str, int, int]] = field(default_factory=list)  # (doc_id, chunk_id, start, end)
    summary: str = ""


def detect(h: nx.Graph, *, resolution: float = 1.0, seed: int = 42, levels: int = 3, min_size: int = 3
           ) -> list[list[Community]]:
    """Louvain communities of the projection ``h`` (isolated nodes left out), as levels from the
    coarsest (0) to the finest kept; each community of a finer level names its parent. Communities
    smaller than ``min_size`` are dropped. Deterministic for a given graph and ``seed``.
    O(E) per Louvain pass (networkx implementation).
    """
    core = h.subgraph([n for n in h if h.degree(n) > 0])
    if core.number_of_nodes() == 0:
        return []
    parts = list(nx.community.louvain_partitions(core, weight="weight", resolution=resolution, seed=seed))
    parts = parts[-levels:][::-1]  # coarsest first
    out: list[list[Community]] = []
    owner: dict[str, str] = {}
    for level, part in enumerate(parts):
        ranked = sorted((sorted(c) for c in part if len(c) >= min_size), key=lambda c: (-len(c), c[0]))
        comms = []
        new_owner = {}
        for n, members in enumerate(ranked):
            cid = f"L{level}-C{n}"
            comms.append(Community(id=cid, level=level, members=members, parent=owner.get(members[0])))
            for m in members:
                new_owner[m] = cid
        owner = new_owner
        out.append(comms)
    return out


def summarize(g: nx.MultiDiGraph, h: nx.Graph, c: Community, *, top: int = 8, sentences: int = 3) -> Community:
    """Fill ``c``'s offline summary in place and return it. O(edges inside the community)."""
    members = set(c.members)
    sub = h.subgraph(members)
    degree = dict(sub.degree(weight="weight"))
    c.top_entities = sorted(members, key=lambda k: (-degree.get(k, 0), k))[:top]
    centrality = {k: degree.get(k, 0) for k in members}
    relations = []
    support: Counter[tuple[str, str, int, int]] = Counter()
    for u in members:
        for _, v, rel, data in g.out_edges(u, keys=True, data=True):
            if v not in members:
                continue
            w = edge_weight(data)
            if rel != COOC:
                relations.append((u, rel, v, w))
            for doc_id, evs in data["docs"].items():
                for chunk_id, s, e in evs:
                    support[(doc_id, chunk_id, s, e)] += centrality[u] + centrality[v]
    relations.sort(key=lambda r: (-r[3], r[0], r[1], r[2]))
    c.top_relations = relations[:top]
    c.sentences = [k for k, _ in sorted(support.items(), key=lambda kv: (-kv[1], kv[0]))[:sentences]]
    names = [entity_name(g.nodes[k]) for k in c.top_entities]
    rels = [f"{entity_name(g.nodes[u])} -{r}-> {entity_name(g.nodes[v])}" for u, r, v, _ in c.top_relations]
    c.summary = "Entities: " + ", ".join(names) + "." + (" Relations: " + "; ".join(rels) + "." if rels else "")
    return c


def relation_strings(g: nx.MultiDiGraph, c: Community) -> list[str]:
    return [f"{entity_name(g.nodes[u])} -{r}-> {entity_name(g.nodes[v])}" for u, r, v, _ in c.top_relations]


def by_member(levels: list[list[Community]]) -> dict[int, dict[str, str]]:
    """level -> entity key -> community id."""
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for level, comms in enumerate(levels):
        for c in comms:
            for m in c.members:
                out[level][m] = c.id
    return out
