"""Context compression: keep the sentences that matter, within a token budget, with citations still valid.

:func:`compress` takes the selected context items and drops, sentence by sentence:

* **irrelevant** sentences: relevance = ``0.65 * cosine(question, sentence) + 0.35 * share of the question's
  key terms found in the sentence`` (the same score the offline extractive answerer ranks sentences by, so the
  sentences it would quote are the last to go). A sentence is irrelevant when its relevance is below
  ``max(min_relevance, relative * best)`` *and* it holds less than ``min_term_share`` of the question's key terms
  (content words, entities and numbers; crude plural stemming). The most relevant sentence is never irrelevant;
* **near-duplicates**: a sentence whose embedding cosine with an already kept sentence is at least
  ``dup_cosine``, or whose content words are (nearly) contained in a kept sentence's (``dup_containment``;
  catches the overlap between consecutive chunks of one document, which may start mid-sentence). Sentences are
  visited best first, so of two duplicates the more relevant is kept;
* text after a quarantine mark in a quarantined chunk (``reason="quarantined"``);
* whatever no longer fits ``budget_tokens`` (least relevant first, ``reason="budget"``).

**Citations stay valid by construction.** Each output item is a *segment*: a run of consecutive kept sentences
of one input chunk, whose ``text`` is the exact substring ``original.text[start:end]`` (original whitespace
included), with the same ``chunk_id``/``doc_id``/``source``/``guard`` and ``start_char`` moved by ``start``
(``end_char`` too on items that have one). A chunk with sentences 1, 2 and 4 kept becomes two items. Anything
that computes a span as ``item.start_char + offset in item.text`` (the extractive answerer) or as
``(start_char, start_char + len(text))`` (the model answerer) therefore points to real text of the source
document, with no remapping step. :attr:`Compressed.spans` gives each segment's span in its original chunk's
text (useful when ``start_char`` is unknown), :attr:`Compressed.kept` the same per chunk.

Sentence order within a chunk is kept, and so is the order of the chunks. When the context holds anything
quotable, the output is never empty: at least the most relevant sentence is kept (cut at a word boundary to
the budget in the rare case that it alone is over it).

Complexity: one embedding batch over the question and every sentence, then O(n * kept) dot products.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from client.answer import QUARANTINE_MARK, ContextItem, _terms, sentences

__all__ = ["COMPRESSOR_VERSION", "CompressSettings", "Compressed", "DroppedSentence", "MemoEmbedder", "compress"]

COMPRESSOR_VERSION = "1"

_WORD = re.compile(r"[a-z0-9]+")


class CompressSettings(BaseModel):
    """Knobs of :func:`compress` (defaults tuned on the SciFact dev split, see ``bench/compression.py``)."""

    min_relevance: float = Field(0.30, ge=0, le=1, description="Absolute relevance floor of a kept sentence.")
    relative: float = Field(0.60, ge=0, le=1, description="Relative floor: a sentence under relative * best "
                            "relevance is dropped (unless it shares a key term with the question).")
    keep_term_overlap: bool = Field(True, description="Keep sentences sharing a key term with the question "
                                    "even under the floors (subject to the budget).")
    min_term_share: float = Field(0.34, ge=0, le=1, description="Share of the question's key terms a sentence "
                                  "must hold for the term-overlap rule to keep it.")
    dup_cosine: float = Field(0.92, gt=0, le=1, description="Embedding cosine at which a sentence is a duplicate.")
    dup_containment: float = Field(0.85, gt=0, le=1, description="Share of a sentence's content words found in "
                                   "a kept sentence at which it is a duplicate (sentences of >= 4 such words).")


class DroppedSentence(BaseModel):
    """A sentence left out, where it was, and why."""

    chunk_id: str
    span: tuple[int, int] = Field(description="Character span in the original chunk text.")
    reason: Literal["irrelevant", "duplicate", "budget", "quarantined"]
    relevance: float = 0.0
    tokens: int = 0
    duplicate_of: str | None = Field(None, description="'chunk_id:start-end' of the kept sentence it repeats.")


class Compressed(BaseModel):
    """The outcome of :func:`compress`."""

    items: list[ContextItem] = Field(description="Segments of the input chunks (exact substrings), in order.")
    spans: list[tuple[int, int]] = Field(default_factory=list, description="Per item: its span in the original "
                                         "chunk's text (parallel to ``items``).")
    kept: dict[str, list[tuple[int, int]]] = Field(default_factory=dict, description="chunk_id -> kept spans in "
                                                   "the original chunk text, in order.")
    tokens_before: int
    tokens_after: int
    budget_tokens: int
    sentences_before: int = 0
    sentences_after: int = 0
    dropped: list[DroppedSentence] = Field(default_factory=list)
    dropped_items: list[str] = Field(default_factory=list, description="Chunk ids with no sentence kept.")
    version: str = COMPRESSOR_VERSION

    @property
    def saved(self) -> float:
        """Share of the tokens removed (0..1)."""
        return 1.0 - self.tokens_after / self.tokens_before if self.tokens_before else 0.0


class MemoEmbedder:
    """Wraps an embedder and remembers the vectors of the last ``max_items`` texts embedded.

    :func:`compress` embeds every sentence of the context; the extractive answerer then embeds the kept ones
    again (the same strings). Pass one ``MemoEmbedder`` to both and the answer step embeds only the question.
    Other attributes (``count_tokens``, ``dim`` ...) are the wrapped embedder's."""

    def __init__(self, embedder: Any, max_items: int = 4096) -> None:
        self.inner, self.max_items = embedder, max_items
        self._memo: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, getattr(self.inner, "dim", 384)), dtype=np.float32)
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        new = (dict(zip(todo, np.asarray(self.inner.embed(todo), dtype=np.float32), strict=True)) if todo else {})
        out = np.stack([new[t] if t in new else self._memo[t] for t in texts])
        self._memo.update(new)
        while len(self._memo) > self.max_items:
            self._memo.pop(next(iter(self._memo)))
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def _count(embedder: Any, text: str) -> int:
    return embedder.count_tokens(text) if embedder is not None else max(1, len(text) // 4)


def compress(question: str, items: Sequence[ContextItem], embedder: Any, *, budget_tokens: int,
             settings: CompressSettings | None = None) -> Compressed:
    """Compress ``items`` for ``question`` to at most ``budget_tokens`` tokens (word pieces of ``embedder``).

    ``embedder`` is a :class:`core.embedder.Embedder` (``embed`` and ``count_tokens``); with ``None`` the
    relevance is the key-term share alone, duplicates are lexical only and tokens are ``len // 4``.
    Returns a :class:`Compressed`; see the module docstring for what is dropped and why citations stay valid."""
    cfg = settings or CompressSettings()
    if budget_tokens < 1:
        raise ValueError("budget_tokens must be >= 1")
    tokens_before = sum(it.tokens if it.tokens > 0 else _count(embedder, it.text) for it in items)

    # ---- sentences: (item index, start, end)
    sents: list[tuple[int, int, int]] = []
    dropped: list[DroppedSentence] = []
    for i, it in enumerate(items):
        cut = it.text.find(QUARANTINE_MARK) if it.guard == "quarantined" else -1
        for s, e in sentences(it.text):
            if cut >= 0 and e > cut:
                dropped.append(DroppedSentence(chunk_id=it.chunk_id, span=(s, e), reason="quarantined",
                                               tokens=_count(embedder, it.text[s:e])))
                continue
            sents.append((i, s, e))
    texts = [items[i].text[s:e] for i, s, e in sents]
    n = len(sents)
    if n == 0:
        return Compressed(items=[], tokens_before=tokens_before, tokens_after=0, budget_tokens=budget_tokens,
                          dropped=dropped, dropped_items=list(dict.fromkeys(it.chunk_id for it in items)))

    # ---- relevance
    q_terms = _terms(question)
    terms = [_terms(t) for t in texts]
    share = np.array([len(q_terms & t) / len(q_terms) if q_terms else 0.0 for t in terms])
    if embedder is not None:
        vecs = np.asarray(embedder.embed([question] + texts), dtype=np.float32)
        cos = np.clip(vecs[1:] @ vecs[0], 0.0, 1.0)
        svecs = vecs[1:]
        rel = 0.65 * cos + 0.35 * share
    else:
        svecs = None
        rel = share.copy()
    tokens = [_count(embedder, t) for t in texts]
    best = float(rel.max())
    floor = max(cfg.min_relevance, cfg.relative * best)

    def on_topic(j: int) -> bool:
        if rel[j] >= floor:
            return True
        return cfg.keep_term_overlap and q_terms != set() and share[j] >= cfg.min_term_share

    # ---- visit best first: irrelevant / duplicate / budget
    order = sorted(range(n), key=lambda j: (-rel[j], j))
    keep: list[int] = []
    used = 0
    words = [set(_WORD.findall(t.lower())) - {"the", "of", "a", "an", "and", "in", "to", "is", "was"} for t in texts]

    def where(j: int) -> str:
        i, s, e = sents[j]
        return f"{items[i].chunk_id}:{s}-{e}"

    for rank, j in enumerate(order):
        i, s, e = sents[j]
        base = {"chunk_id": items[i].chunk_id, "span": (s, e), "relevance": round(float(rel[j]), 4),
                "tokens": tokens[j]}
        dup = None
        if keep:
            if svecs is not None:
                sims = svecs[keep] @ svecs[j]
                k = int(np.argmax(sims))
                if sims[k] >= cfg.dup_cosine:
                    dup = keep[k]
            if dup is None and len(words[j]) >= 4:
                for k in keep:
                    if len(words[j] & words[k]) >= cfg.dup_containment * len(words[j]):
                        dup = k
                        break
        if dup is not None:
            dropped.append(DroppedSentence(**base, reason="duplicate", duplicate_of=where(dup)))
            continue
        if rank > 0 and not on_topic(j):
            dropped.append(DroppedSentence(**base, reason="irrelevant"))
            continue
        if used + tokens[j] > budget_tokens:
            dropped.append(DroppedSentence(**base, reason="budget"))
            continue
        keep.append(j)
        used += tokens[j]

    trimmed: dict[int, int] = {}  # sentence -> new end, when the best sentence alone is over the budget
    if not keep:
        j = order[0]
        i, s, e = sents[j]
        dropped = [d for d in dropped if not (d.chunk_id == items[i].chunk_id and d.span == (s, e))]
        end = _trim(items[i].text, s, e, budget_tokens, embedder)
        keep.append(j)
        if end < e:
            trimmed[j] = end

    # ---- segments: runs of consecutive kept sentences of one item, in the original order
    chosen = sorted(keep)
    out_items: list[ContextItem] = []
    spans: list[tuple[int, int]] = []
    seg_rel: list[float] = []
    kept: dict[str, list[tuple[int, int]]] = {}
    run: list[int] = []

    def flush() -> None:
        if not run:
            return
        i = sents[run[0]][0]
        s, e = sents[run[0]][1], trimmed.get(run[-1], sents[run[-1]][2])
        it = items[i]
        text = it.text[s:e]
        upd: dict[str, Any] = {"text": text, "tokens": _count(embedder, text)}
        if it.start_char is not None:
            upd["start_char"] = it.start_char + s
            if getattr(it, "end_char", None) is not None:
                upd["end_char"] = it.start_char + e
        out_items.append(it.model_copy(update=upd))
        spans.append((s, e))
        seg_rel.append(float(max(rel[j] for j in run)))
        for j in run:
            kept.setdefault(it.chunk_id, []).append((sents[j][1], trimmed.get(j, sents[j][2])))
        run.clear()

    for j in chosen:
        if run and not (sents[j][0] == sents[run[-1]][0] and j == run[-1] + 1):
            flush()
        run.append(j)
    flush()

    # Word pieces never span whitespace, so segment counts are the sums of their sentences'; should a tokenizer
    # differ, enforce the budget on the real segment counts (least relevant segment first, never the last one).
    total = sum(it.tokens for it in out_items)
    if total > budget_tokens and len(out_items) > 1:
        gone: set[int] = set()
        for x in sorted(range(len(out_items)), key=lambda x: seg_rel[x]):
            if total <= budget_tokens or len(out_items) - len(gone) <= 1:
                break
            it, (s, e) = out_items[x], spans[x]
            gone.add(x)
            total -= it.tokens
            dropped.append(DroppedSentence(chunk_id=it.chunk_id, span=(s, e), reason="budget", tokens=it.tokens,
                                           relevance=round(seg_rel[x], 4)))
            kept[it.chunk_id] = [sp for sp in kept[it.chunk_id] if not (s <= sp[0] and sp[1] <= e)]
        out_items = [o for x, o in enumerate(out_items) if x not in gone]
        spans = [sp for x, sp in enumerate(spans) if x not in gone]
        kept = {c: v for c, v in kept.items() if v}

    dropped.sort(key=lambda d: (d.chunk_id, d.span))
    ids = list(dict.fromkeys(it.chunk_id for it in items))
    return Compressed(items=out_items, spans=spans, kept=kept, tokens_before=tokens_before,
                      tokens_after=sum(it.tokens for it in out_items), budget_tokens=budget_tokens,
                      sentences_before=n + sum(d.reason == "quarantined" for d in dropped),
                      sentences_after=sum(len(v) for v in kept.values()), dropped=dropped,
                      dropped_items=[c for c in ids if c not in kept])


def _trim(text: str, s: int, e: int, budget: int, embedder: Any) -> int:
    """The largest end <= e at a word boundary such that text[s:end] fits ``budget`` tokens (at least one word)."""
    if _count(embedder, text[s:e]) <= budget:
        return e
    cuts = [m.start() for m in re.finditer(r"\s+", text[s:e])]
    cuts = [s + c for c in cuts if c > 0]
    lo, hi, best = 0, len(cuts) - 1, (cuts[0] if cuts else e)
    while lo <= hi:
        mid = (lo + hi) // 2
        if _count(embedder, text[s:cuts[mid]]) <= budget:
            best, lo = cuts[mid], mid + 1
        else:
            hi = mid - 1
    return best
