"""Search algorithms over the entity graph, networkx style: plain functions over a graph.

Every function reads the graph layout of :mod:`graph.state` (or the undirected projection made by
:func:`projection`) and returns plain values; the engine turns them into schemas and applies the
guard policy to any text.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

import networkx as nx
import numpy as np

from graph.canonical import AliasTable, normalize
from graph.state import COOC, edge_weight

__all__ = [
    "BipartiteIndex",
    "entity_chunks",
    "expand",
    "k_shortest_paths",
    "match_names",
    "name_index",
    "personalized_pagerank",
    "projection",
    "rank_chunks",
]

_WORD = re.compile(r"[\w][\w'’.&-]*", re.UNICODE)
RELATION_BOOST = 2.0  # a parsed relation counts twice a co-occurrence in the projection


def projection(g: nx.MultiDiGraph) -> nx.Graph:
    """Undirected weighted projection: one edge per entity pair, ``weight`` = supporting sentences
    (relations counted :data:`RELATION_BOOST` times). Isolated entities are kept. O(V + E)."""
    h = nx.Graph()
    h.add_nodes_from(g.nodes)
    for u, v, k, data in g.edges(keys=True, data=True):
        w = edge_weight(data) * (1.0 if k == COOC else RELATION_BOOST)
        if h.has_edge(u, v):
            h[u][v]["weight"] += w
        else:
            h.add_edge(u, v, weight=w)
    return h


def name_index(g: nx.MultiDiGraph, aliases: AliasTable) -> dict[str, str]:
    """Normalised name -> entity key: every key, every alias key that resolves to a node, and every
    surface form of a node (normalised). O(V + surface forms)."""
    index: dict[str, str] = {}
    for key, data in g.nodes(data=True):
        for d in data["docs"].values():
            for surface in d["sf"]:
                index.setdefault(normalize(surface), key)
    for alias in aliases.keys():  # noqa: SIM118 (AliasTable is not iterable)
        target = aliases.resolve(alias)
        if target in g:
            index[alias] = target
    for key in g.nodes:
        index[key] = key
    return index


def match_names(query: str, index: Mapping[str, str], stopwords: Iterable[str] = (), max_len: int = 8) -> dict[str, str]:
    """Entities named in ``query``: entity key -> the matched text.

    Longest match first over word n-grams (up to ``max_len`` words), no two matches overlapping; a
    plural "s" is also tried. Stop-word-only n-grams never match. O(words x max_len).
    """
    stop = set(stopwords)
    words = [m.group(0).strip(".'’-&") for m in _WORD.finditer(query)]
    words = [w for w in words if w]
    taken = [False] * len(words)
    found: dict[str, str] = {}
    for n in range(min(max_len, len(words)), 0, -1):
        for i in range(len(words) - n + 1):
            if any(taken[i : i + n]):
                continue
            gram = words[i : i + n]
            if all(w.lower() in stop for w in gram) or (n == 1 and len(gram[0]) < 2):
                continue
            text = " ".join(gram)
            key = normalize(text)
            hit = index.get(key)
            if hit is None and key.endswith("s") and len(key) > 3:
                hit = index.get(key[:-1])
            if hit is not None:
                found.setdefault(hit, text)
                for j in range(i, i + n):
                    taken[j] = True
    return found


def entity_chunks(g: nx.MultiDiGraph, key: str) -> set[str]:
    """Chunk ids supporting an entity. O(its mentions)."""
    return {ev[0] for d in g.nodes[key]["docs"].values() for ev in d["ev"]}


def expand(h: nx.Graph, seeds: Mapping[str, float], hops: int, *, decay: float = 0.5, per_node: int = 20,
           max_nodes: int = 200) -> dict[str, tuple[float, int, str | None]]:
    """Breadth-first expansion of scored seeds ``hops`` steps over the projection ``h``.

    A neighbour scores ``decay * parent score * w / max w`` (``w`` the edge weight), keeping its best
    parent; each node passes on to its ``per_node`` strongest neighbours and the whole expansion stops
    at ``max_nodes``. Returns key -> (score, hop, parent or None for a seed).
    O(max_nodes x per_node log degree).
    """
    out: dict[str, tuple[float, int, str | None]] = {k: (s, 0, None) for k, s in seeds.items() if k in h}
    frontier = dict(out)
    for hop in range(1, hops + 1):
        nxt: dict[str, tuple[float, str]] = {}
        for key, (score, _, _) in frontier.items():
            nbrs = h[key]
            if not nbrs:
                continue
            top = sorted(nbrs.items(), key=lambda kv: (-kv[1]["weight"], kv[0]))[:per_node]
            wmax = top[0][1]["weight"]
            for nb, data in top:
                if nb in out:
                    continue
                s = decay * score * data["weight"] / wmax
                if s > nxt.get(nb, (0.0, ""))[0]:
                    nxt[nb] = (s, key)
        room = max_nodes - len(out)
        if room <= 0 or not nxt:
            break
        chosen = sorted(nxt.items(), key=lambda kv: (-kv[1][0], kv[0]))[:room]
        frontier = {k: (s, hop, parent) for k, (s, parent) in chosen}
        out.update(frontier)
    return out


def rank_chunks(g: nx.MultiDiGraph, scores: Mapping[str, float], total_chunks: int) -> list[tuple[str, float, list[str]]]:
    """Chunks supporting scored entities, ranked by the sum over their entities of
    ``score x idf`` (``idf = log(1 + total_chunks / chunks of the entity)``), so a specific entity
    counts more than a hub. Returns (chunk id, score, entity keys by contribution). O(sum of mentions)."""
    acc: dict[str, float] = defaultdict(float)
    why: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for key, score in scores.items():
        chunks = entity_chunks(g, key)
        idf = math.log(1 + total_chunks / max(1, len(chunks)))
        for c in chunks:
            acc[c] += score * idf
            why[c].append((score * idf, key))
    ranked = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(c, s, [k for _, k in sorted(why[c], key=lambda p: (-p[0], p[1]))]) for c, s in ranked]


def k_shortest_paths(h: nx.Graph, source: str, target: str, k: int, max_length: int) -> tuple[list[list[str]], bool]:
    """Up to ``k`` shortest simple paths (fewest hops, ties by total weight preference through
    networkx's Yen implementation) of at most ``max_length`` edges. Returns (paths, capped) where
    ``capped`` says that another path within ``max_length`` exists. O(k V (V log V + E)) worst case."""
    if source == target:
        return [[source]], False
    try:
        gen = nx.shortest_simple_paths(h, source, target)
        paths = []
        for p in islice(gen, k + 1):
            if len(p) - 1 > max_length:
                break
            paths.append(p)
    except nx.NetworkXNoPath:
        return [], False
    return paths[:k], len(paths) > k


def personalized_pagerank(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n: int, personalization: np.ndarray,
                          *, damping: float = 0.5, tol: float = 1e-6, max_iter: int = 50) -> np.ndarray:
    """Personalised PageRank by power iteration over a weighted edge list (``src -> dst``, each
    undirected edge given both ways), in numpy: networkx's ``pagerank`` needs scipy and rebuilds
    the sparse matrix on every call.

    ``p = (1 - damping) * s + damping * (W p + dangling mass * s)`` with ``W`` column-normalised and
    ``s`` the normalised personalization. Returns ``p`` (sums to 1). O(max_iter x E).
    """
    s = personalization.astype(np.float64)
    total = s.sum()
    if total <= 0:
        raise ValueError("personalization must have positive mass")
    s /= total
    out_w = np.bincount(src, weights=weight, minlength=n)
    norm = weight / out_w[src]
    dangling = out_w == 0
    p = s.copy()
    for _ in range(max_iter):
        spread = np.bincount(dst, weights=norm * p[src], minlength=n)
        new = (1 - damping) * s + damping * (spread + p[dangling].sum() * s)
        if np.abs(new - p).sum() < tol:
            return new
        p = new
    return p


@dataclass
class BipartiteIndex:
    """The entity-chunk graph of HippoRAG as arrays: entity nodes ``0..E-1``, chunk nodes after them;
    an edge between an entity and every chunk that mentions it, and between related entities
    (weight = supporting sentences). Build once per graph version. O(V + E + mentions)."""

    entities: list[str]
    chunks: list[str]
    entity_row: dict[str, int]
    chunk_row: dict[str, int]
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    chunk_count: np.ndarray  # per entity: chunks mentioning it

    @classmethod
    def build(cls, g: nx.MultiDiGraph, h: nx.Graph, chunk_ids: Iterable[str], *, entity_edge_scale: float = 1.0
              ) -> BipartiteIndex:
        entities = sorted(g.nodes)
        chunks = sorted(chunk_ids)
        erow = {k: i for i, k in enumerate(entities)}
        crow = {c: len(entities) + i for i, c in enumerate(chunks)}
        src, dst, w = [], [], []
        count = np.zeros(len(entities))
        for key in entities:
            cs = entity_chunks(g, key)
            count[erow[key]] = len(cs)
            for c in cs:
                if c in crow:
                    src += [erow[key], crow[c]]
                    dst += [crow[c], erow[key]]
                    w += [1.0, 1.0]
        if entity_edge_scale > 0:
            for u, v, data in h.edges(data=True):
                x = entity_edge_scale * math.log1p(data["weight"])
                src += [erow[u], erow[v]]
                dst += [erow[v], erow[u]]
                w += [x, x]
        return cls(entities, chunks, erow, crow, np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64),
                   np.asarray(w, dtype=np.float64), count)

    @property
    def size(self) -> int:
        return len(self.entities) + len(self.chunks)

    def chunk_scores(self, entity_seeds: Mapping[str, float], chunk_seeds: Mapping[str, float] | None = None, *,
                     damping: float = 0.5) -> list[tuple[str, float]]:
        """PPR restarting at the seeds (entities weighted by specificity ``1 / chunks``, as in HippoRAG);
        returns every chunk with its score, best first."""
        pers = np.zeros(self.size)
        for key, s in entity_seeds.items():
            row = self.entity_row.get(key)
            if row is not None and s > 0:
                pers[row] += s / max(1.0, self.chunk_count[row])
        if pers.sum() > 0:
            pers /= pers.sum()
        if chunk_seeds:
            cpers = np.zeros(self.size)
            for c, s in chunk_seeds.items():
                row = self.chunk_row.get(c)
                if row is not None and s > 0:
                    cpers[row] += s
            if cpers.sum() > 0:
                pers += cpers / cpers.sum()
        if pers.sum() <= 0:
            return []
        p = personalized_pagerank(self.src, self.dst, self.weight, self.size, pers, damping=damping)
        base = len(self.entities)
        scores = p[base:]
        order = np.argsort(-scores, kind="stable")
        return [(self.chunks[i], float(scores[i])) for i in order if scores[i] > 0]
