"""Offline evidence-based judging: claims, their best evidence, and support or contradiction cues.

Plain functions over text and one sentence embedder (all-MiniLM-L6-v2), no model
download, no MCP. The judge (``engine.py``) composes them:

- :func:`split_sentences` / :func:`split_claims`: an answer becomes atomic claims
  (sentences, then coordinated and relative clauses); hedges ("i'm not sure, but",
  "I think that") are stripped and personal or content-free statements ("me too!",
  "I love cats") are set aside as not checkable.
- :func:`claim_evidence`: for each claim, the context sentence nearest by embedding
  cosine, and the evidence features the rubric weighs: lexical support (content stems
  found in the contexts and in the best sentence), word pairs that co-occur in a context
  sentence, terms found nowhere in the evidence, number and date agreement, negation,
  antonyms and repeated proper nouns.

Everything is O(claims x context sentences) plus one embedding batch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

__all__ = ["ClaimEvidence", "Evidence", "content_stems", "split_claims", "split_sentences", "tokens"]

# ---------------------------------------------------------------------------------------------- words

STOPWORDS = frozenset("""
a an the and or but if then so of to in on at by for with from as is are was were be been being am do does did done
have has had having it its this that these those there here i me my mine we our ours you your yours he him his she
her hers they them their theirs what which who whom whose when where why how all any both each few more most other
some such only own same than too very s t can will just should now also would could may might must shall about into
through during before after above below up down out off over under again further once because while until yes yeah
oh well like really actually know think sure one im ive dont thats lot much many get got go going make made say said
thing things something anything re ll ve d m o y let lets us ok okay hmm um uh
""".split())

#: discourse and generic words: neither evidence of support nor of a hallucination
GENERIC = frozenset("""
love like great cool nice interesting fun agree favorite favourite wow awesome good bad hope enjoy guess true right
pretty kind heard hear seen see fan believe welcome around since long time times kinds different word words call
called come came use used often usual usually back date dates whole ever took known origin originally began begin
start started way ways people person world year years day days place places lots big little new old best better
famous popular type types part parts even still always maybe probably definitely especially quite rather enough
someone everyone anyone everything name named funny huge sorry thanks thank glad happy sad wish want wanted need
""".split())

NEGATIONS = frozenset("""not no never nor none nobody nothing neither without cannot t didn doesn isn wasn aren weren
don won hasn haven hadn couldn shouldn wouldn""".split())

#: antonym pairs (stems); a claim using one where its best sentence uses the other is a contradiction cue
_ANTONYMS = [("larg", "small"), ("largest", "smallest"), ("big", "small"), ("biggest", "smallest"),
             ("most", "least"), ("more", "less"), ("better", "poorer"), ("better", "wors"), ("best", "worst"),
             ("high", "low"), ("higher", "lower"), ("highest", "lowest"), ("first", "last"), ("earli", "later"),
             ("earliest", "latest"), ("befor", "after"), ("increas", "decreas"), ("north", "south"),
             ("east", "west"), ("older", "younger"), ("oldest", "youngest"), ("won", "lost"), ("win", "lose"),
             ("mal", "femal"), ("male", "femal"), ("rich", "poor"), ("open", "close"), ("alive", "dead"),
             ("maximum", "minimum"), ("major", "minor"), ("top", "bottom"), ("long", "short"),
             ("longest", "shortest"), ("heavi", "light"), ("fast", "slow"), ("fastest", "slowest"),
             ("warm", "cold"), ("hot", "cold"), ("true", "fals"), ("success", "failur"), ("start", "end"),
             ("begin", "end"), ("entir", "partial"), ("legal", "illeg"), ("public", "privat")]
ANTONYMS: dict[str, frozenset[str]] = {}
for _a, _b in _ANTONYMS:
    ANTONYMS[_a] = ANTONYMS.get(_a, frozenset()) | {_b}
    ANTONYMS[_b] = ANTONYMS.get(_b, frozenset()) | {_a}

_NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                 "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20",
                 "hundred": "100", "thousand": "1000", "first": "1", "second": "2", "third": "3", "fourth": "4",
                 "fifth": "5", "sixth": "6", "seventh": "7", "eighth": "8", "ninth": "9", "tenth": "10"}

_TOKEN = re.compile(r"[A-Za-z]+|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d{3})*(?:\.\d+)?")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.I)
_PROPER = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}")


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer  # PyStemmer (Snowball), already used by the retrieval server's BM25

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stemWord(word)


def tokens(text: str) -> list[str]:
    """Lower-cased word and number tokens."""
    return [t.lower() for t in _TOKEN.findall(text)]


def content_stems(text: str, *, generic: bool = False) -> list[str]:
    """Stems of the content words of ``text`` in order (no stopwords, negations, digits; no generic words
    unless ``generic``)."""
    out = []
    for t in tokens(text):
        if len(t) < 2 or t.isdigit() or t in STOPWORDS or t in NEGATIONS:
            continue
        if not generic and t in GENERIC:
            continue
        out.append(_stem(t))
    return out


def numbers(text: str) -> set[str]:
    """Numbers in ``text``, normalised (``1,000`` -> ``1000``, ``4th`` -> ``4``, ``four`` -> ``4``)."""
    text = _ORDINAL.sub(r"\1", text)
    out = set()
    for m in _NUMBER.findall(text):
        v = m.replace(",", "")
        if "." in v:
            v = v.rstrip("0").rstrip(".")
        out.add(v)
    for t in tokens(text):
        if t in _NUMBER_WORDS:
            out.add(_NUMBER_WORDS[t])
    return out


# ---------------------------------------------------------------------------------------------- splitting

# A sentence ends after . ! ? and a space; or after . ! ? glued to a capitalised word ("year.Scientific
# American", common in scraped text); or at a line break.
_SENT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[A-Z0-9])|(?<=[a-z0-9)\"][.!?])(?=[A-Z][a-z])|\n+")
# answers may be lower-cased ("me too ! it was ..."): any . ! ? followed by space ends a sentence
_ANSWER_SENT = re.compile(r"(?<=[.!?])\s+|(?<=[a-z0-9)\"][.!?])(?=[A-Z][a-z])|\n+")
_ABBREV = re.compile(r"(?:\b(?:[A-Za-z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|No|vs|etc|e\.g|i\.e|U\.S|Inc|Ltd|Co))\.$")
_CLAUSE = re.compile(
    r"\s*(?:,\s*(?:but|and|while|whereas|although|though|so|yet)\s+|;\s*|\s+but\s+|,?\s*\bwhich\s+"
    r"|\s+and\s+(?=(?:i|he|she|it|they|we|you|the|this|that|there|its|his|her|their)\b))",
    re.I,
)
_HEDGE = re.compile(
    r"^(?:(?:yes|yeah|no|well|oh|wow|ok|okay|sure|exactly|indeed|true|really|me too|i agree|haha|lol|"
    r"that\s?'?\s?s\s(?:true|right|cool|interesting|great|awesome|funny|amazing))\s*[,.!]?\s*)*"
    r"(?:(?:i|we)\s(?:do\s|also\s|actually\s|did\s)?(?:know|think|believe|heard|read|learned|guess)\s(?:that\s)?"
    r"|did you know\s(?:that\s)?|do you know\s(?:that\s)?|i\s?'?\s?m not sure(?: about that)?\s?,?\s?but\s)",
    re.I,
)
_PERSONAL = re.compile(r"^(?:i|i\s?'\s?(?:m|ve|d|ll)|you|you\s?'\s?(?:re|ve)|we|me|my|your|our)\b", re.I)


def _split(text: str, pattern: re.Pattern[str]) -> list[str]:
    parts, buf = [], ""
    for piece in pattern.split(text):
        if piece is None:
            continue
        buf = f"{buf} {piece}".strip() if buf else piece.strip()
        if buf and not _ABBREV.search(buf):
            parts.append(buf)
            buf = ""
    if buf:
        parts.append(buf)
    return [p for p in parts if p.strip()]


def split_sentences(text: str) -> list[str]:
    """The sentences of a context (abbreviations such as "Dr." and initials do not end one)."""
    return _split(text, _SENT)


@dataclass
class Claims:
    checkable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def split_claims(answer: str, *, max_claims: int = 64) -> Claims:
    """Atomic claims of ``answer``: sentences split at coordinated and relative clauses, hedges stripped.

    Statements about the speaker or the listener ("I love cats too", "you should see it") and clauses
    with no content word are ``skipped``: there is nothing in a context to check them against."""
    out = Claims()
    for sentence in _split(answer, _ANSWER_SENT):
        for clause in _CLAUSE.split(sentence):
            clause = (clause or "").strip(" ,;:-")
            if not clause:
                continue
            stripped = _HEDGE.sub("", clause).strip(" ,;:-")
            if not stripped or _PERSONAL.match(stripped) or not content_stems(stripped):
                out.skipped.append(clause)
            elif len(out.checkable) < max_claims:
                out.checkable.append(stripped)
            else:
                out.skipped.append(clause)
    return out


# ---------------------------------------------------------------------------------------------- evidence


@dataclass
class ClaimEvidence:
    """What the contexts say about one claim (the rubric turns this into a verdict)."""

    claim: str
    context_index: int | None
    sentence: str | None
    cosine: float
    support: float = 0.0          # share of the claim's content stems found anywhere in the evidence
    best_cover: float = 0.0       # share of them found in the best sentence and its neighbours
    pair_cover: float = 1.0       # share of adjacent known-word pairs that co-occur in a context sentence
    novel: list[str] = field(default_factory=list)          # content words found nowhere in the evidence
    novel_entities: list[str] = field(default_factory=list)  # of which capitalised in the claim
    bad_numbers: list[str] = field(default_factory=list)     # numbers (dates) absent from every context
    negation_mismatch: bool = False
    antonyms: list[str] = field(default_factory=list)        # "poorer/better" pairs against the best sentence
    repeated_entity: bool = False                            # "Denmark is the capital of Denmark"
    n_terms: int = 0

    @property
    def novel_ratio(self) -> float:
        return len(self.novel) / self.n_terms if self.n_terms else 0.0


class Evidence:
    """The contexts of one judgement, prepared once: sentences, stems, numbers, word pairs, proper nouns."""

    def __init__(self, contexts: Sequence[str], *, extra: str = "", window: int = 3, max_sentences: int = 2000) -> None:
        self.sentences: list[str] = []
        self.owner: list[int] = []
        for i, ctx in enumerate(contexts):
            for s in split_sentences(ctx):
                if len(self.sentences) >= max_sentences:
                    break
                self.sentences.append(s)
                self.owner.append(i)
        joined = "\n".join(contexts)
        self.stems = set(content_stems(joined, generic=True))
        self.given = set(content_stems(extra, generic=True)) - self.stems  # the question: neither support nor novel
        self.numbers = numbers(joined)
        self.proper = {w.lower() for w in _PROPER.findall(joined)}
        self.sentence_stems = [set(content_stems(s, generic=True)) for s in self.sentences]
        self.pairs: set[tuple[str, str]] = set()
        for s in self.sentences:
            seq = content_stems(s, generic=True)
            for a in range(len(seq)):
                for b in range(a + 1, min(len(seq), a + 1 + window)):
                    self.pairs.add((seq[a], seq[b]))
                    self.pairs.add((seq[b], seq[a]))
        self._prefixes = sorted(self.stems)

    def known(self, stem: str) -> bool:
        """A stem found in the evidence, or a prefix of one ("beet" / "beetroot")."""
        if stem in self.stems:
            return True
        if len(stem) < 4:
            return False
        import bisect

        i = bisect.bisect_left(self._prefixes, stem)
        return i < len(self._prefixes) and self._prefixes[i].startswith(stem)

    def assess(self, claims: Sequence[str], claim_vecs: np.ndarray, sentence_vecs: np.ndarray) -> list[ClaimEvidence]:
        """Evidence for each claim (``claim_vecs`` and ``sentence_vecs`` are unit vectors, one row each)."""
        sims = claim_vecs @ sentence_vecs.T if len(self.sentences) else np.zeros((len(claims), 0), np.float32)
        out = []
        for i, claim in enumerate(claims):
            if sims.shape[1]:
                j = int(np.argmax(sims[i]))
                cos = float(sims[i, j])
                ev = ClaimEvidence(claim, self.owner[j], self.sentences[j], cos if np.isfinite(cos) else 0.0)
                best_text = self.sentences[j]
                # the best sentence with its neighbours in the same context: "She was born in 1867" after
                # "Marie Curie was a physicist" covers "Marie Curie was born in 1867"
                best_stems = set().union(*(self.sentence_stems[k] for k in (j - 1, j, j + 1)
                                           if 0 <= k < len(self.sentences) and self.owner[k] == self.owner[j]))
            else:
                ev = ClaimEvidence(claim, None, None, 0.0)
                best_stems, best_text = set(), ""
            words = tokens(claim)
            terms = content_stems(claim)
            ev.n_terms = len(terms)
            if terms:
                ev.novel = [w for w in terms if not self.known(w) and w not in self.given]
                ev.support = sum(self.known(w) for w in terms) / len(terms)
                ev.best_cover = sum(w in best_stems for w in terms) / len(terms)
            capitalised = {w.lower() for w in _PROPER.findall(claim)} | {w.lower() for w in re.findall(r"^[A-Z][a-z]{2,}", claim)}
            ev.novel_entities = sorted({w for w in capitalised if w not in STOPWORDS and not self.known(_stem(w))
                                        and _stem(w) not in self.given})
            ev.bad_numbers = sorted(numbers(claim) - self.numbers)
            seq = [w for w in content_stems(claim, generic=True) if w in self.stems]
            pairs = [(a, b) for a, b in zip(seq, seq[1:]) if a != b]
            ev.pair_cover = sum(p in self.pairs for p in pairs) / len(pairs) if pairs else 1.0
            best_words = tokens(best_text)
            ev.negation_mismatch = bool(best_text) and (any(w in NEGATIONS for w in words)
                                                        != any(w in NEGATIONS for w in best_words))
            claim_stems = {_stem(w) for w in words}
            for w in claim_stems:
                for opposite in ANTONYMS.get(w, ()):
                    if opposite in best_stems and w not in best_stems:
                        ev.antonyms.append(f"{w}/{opposite}")
            counts = Counter(w for w in words if w in self.proper)
            ev.repeated_entity = any(n > 1 for n in counts.values())
            out.append(ev)
        return out
