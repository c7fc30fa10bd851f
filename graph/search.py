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
from dataclasses import dataclass, field
from itertools import islice

import networkx as nx
import numpy as np

from graph.canonical import AliasTable, normalize
from graph.extract import TITLE_LABEL
from graph.state import COOC, ChunkRecord, DocRecord, edge_weight

__all__ = [
    "BipartiteIndex",
    "chunk_subjects",
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
SUBJECT_WEIGHT = 12.0  # entity-chunk edge weight when the entity is what the chunk is about (tuned: bench/graph.py)


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


_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)


def _lead(text: str) -> str:
    return _ARTICLE.sub("", text.lstrip()[:300]).lower()


def _opens_with(head: str, surface: str) -> bool:
    """``head`` (a :func:`_lead` text) starts with the whole words of ``surface``."""
    s = _lead(surface)
    return bool(s) and head.startswith(s) and (len(head) == len(s) or not head[len(s)].isalnum())


def chunk_subjects(g: nx.MultiDiGraph, docs: Mapping[str, DocRecord], chunks: Mapping[str, ChunkRecord],
                   aliases: AliasTable) -> dict[str, set[str]]:
    """Chunk id -> the entities its document is about: those its title names (a title is provenance
    metadata, like an encyclopedia's article name) or, for a document whose title names none (or that
    has no title), the entity its text opens with ("Mark Bowden (born 1951) is an American writer"):
    a mention of the first sentence that starts the text, a leading article aside. Every chunk of a
    document shares its subjects. O(mentions)."""
    out: dict[str, set[str]] = {}
    for rec in docs.values():
        mentions = rec.extraction.mentions
        keys = {aliases.resolve(m.key) for m in mentions if m.in_title}
        first = chunks.get(rec.chunk_ids[0]) if rec.chunk_ids else None
        if not keys and first is not None:
            head = _lead(first.text)
            lead = next((m for m in mentions if m.chunk_id == first.chunk_id and m.start == 0 and not m.in_title
                         and m.label != TITLE_LABEL and _opens_with(head, m.surface)), None)
            if lead is not None:
                keys = {aliases.resolve(lead.key)}
        keys = {k for k in keys if k in g}
        if keys:
            for c in rec.chunk_ids:
                out[c] = keys
    return out


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
    an edge between an entity and every chunk that mentions it (weight 1, or ``subject_weight`` when
    the entity is the chunk's subject: the walk from "Mark Bowden" goes mostly to the passage *about*
    Mark Bowden, not to every passage naming him), and between related entities (weight
    ``log(1 + supporting sentences)``). Build once per graph version. O(V + E + mentions)."""

    entities: list[str]
    chunks: list[str]
    entity_row: dict[str, int]
    chunk_row: dict[str, int]
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    chunk_count: np.ndarray  # per entity: chunks mentioning it
    chunk_entities: dict[str, list[str]] = field(default_factory=dict)  # chunk -> entities it mentions

    @classmethod
    def build(cls, g: nx.MultiDiGraph, h: nx.Graph, chunk_ids: Iterable[str], *, entity_edge_scale: float = 1.0,
              subjects: Mapping[str, Iterable[str]] | None = None, subject_weight: float = SUBJECT_WEIGHT
              ) -> BipartiteIndex:
        """``subjects``: chunk id -> the entity keys it is about (default: read from the graph, the
        entities the document's title names; see :func:`chunk_subjects` for title-less documents)."""
        entities = sorted(g.nodes)
        chunks = sorted(chunk_ids)
        erow = {k: i for i, k in enumerate(entities)}
        crow = {c: len(entities) + i for i, c in enumerate(chunks)}
        about: dict[str, set[str]] = defaultdict(set)
        if subjects is not None:
            for c, keys in subjects.items():
                about[c].update(keys)
        src, dst, w = [], [], []
        count = np.zeros(len(entities))
        mentioned: dict[str, list[str]] = defaultdict(list)
        for key in entities:
            cs: dict[str, bool] = {}
            for d in g.nodes[key]["docs"].values():
                for ev in d["ev"]:
                    title = bool(ev[3]) if subjects is None and len(ev) > 3 else False
                    cs[ev[0]] = cs.get(ev[0], False) or title or key in about.get(ev[0], ())
            count[erow[key]] = len(cs)
            for c, is_subject in sorted(cs.items()):
                if c in crow:
                    x = subject_weight if is_subject else 1.0
                    src += [erow[key], crow[c]]
                    dst += [crow[c], erow[key]]
                    w += [x, x]
                    mentioned[c].append(key)
        if entity_edge_scale > 0:
            for u, v, data in h.edges(data=True):
                x = entity_edge_scale * math.log1p(data["weight"])
                src += [erow[u], erow[v]]
                dst += [erow[v], erow[u]]
                w += [x, x]
        return cls(entities, chunks, erow, crow, np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64),
                   np.asarray(w, dtype=np.float64), count, dict(mentioned))

    @property
    def size(self) -> int:
        return len(self.entities) + len(self.chunks)

    def hop_seeds(self, hop_chunks: Mapping[str, float]) -> dict[str, float]:
        """Entity seeds of a second hop: every entity a chunk of ``hop_chunks`` (chunk id -> weight)
        mentions, with the summed weight of the chunks naming it. O(their mentions)."""
        out: dict[str, float] = defaultdict(float)
        for c, s in hop_chunks.items():
            if s > 0:
                for key in self.chunk_entities.get(c, ()):
                    out[key] += s
        return dict(out)

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
