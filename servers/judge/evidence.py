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

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise

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
thing things something anything re ll ve d m o y let lets us ok okay hmm um uh st nd rd th
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

#: absolute words: a claim that says "all", "every" or "always" needs evidence that says so too ("some residents")
_ABSOLUTE = frozenset({"all", "every", "entire", "entirely", "always", "completely", "totally", "fully", "permanently",
                       "everyone", "everybody", "everything"})

#: negation words as cues: "won't" and "don't" are tokenised "won" "t" / "don" "t", and "won" alone is a verb
NEGATION_CUES = NEGATIONS - {"won", "don"}

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
             ("begin", "end"), ("entir", "partial"), ("legal", "illeg"), ("public", "privat"), ("northern", "southern"),
             ("eastern", "western"), ("upper", "lower"), ("inner", "outer"), ("import", "export"),
             ("internal", "extern"), ("urban", "rural"), ("posit", "negat"), ("wet", "dri"), ("full", "empti"),
             ("larger", "smaller"), ("bigger", "smaller"), ("rise", "fall"), ("rose", "fell"), ("risen", "fallen"),
             ("rise", "drop"), ("rose", "drop"), ("climb", "fell"), ("climb", "drop"), ("grow", "shrink"),
             ("grew", "shrank"), ("gain", "lost"), ("gain", "loss"), ("profit", "loss"), ("rais", "lower"),
             ("approv", "reject"), ("accept", "reject"), ("accept", "refus"), ("allow", "ban"), ("allow", "forbid"),
             ("strengthen", "weaken"), ("stronger", "weaker"), ("expand", "shrink"), ("ahead", "behind")]
_DERIVED = frozenset({"an", "ian", "ean", "ese", "ern", "ish", "ic", "ical"})
#: demonyms the suffix rule above cannot derive ("Swedish" / "Sweden"), both ways
_DEMONYMS = {"swedish": "sweden", "swede": "sweden", "danish": "denmark", "dane": "denmark", "finnish": "finland",
             "british": "britain", "spanish": "spain", "polish": "poland", "irish": "ireland", "scottish": "scotland",
             "scot": "scotland", "english": "england", "welsh": "wales", "dutch": "netherlands", "swiss": "switzerland",
             "greek": "greece", "french": "france", "norwegian": "norway", "german": "germany", "thai": "thailand",
             "turkish": "turkey", "portuguese": "portugal", "filipino": "philippines", "peruvian": "peru",
             "icelandic": "iceland", "belgian": "belgium", "iraqi": "iraq", "israeli": "israel", "pakistani": "pakistan",
             "lebanese": "lebanon", "vietnamese": "vietnam", "argentine": "argentina", "argentinian": "argentina"}
_PRONOUN_START = re.compile(r"^\W*(?:he|she|it|they|his|her|its|their|this|these|the (?:company|band|city|group|film|team))\b", re.I)
_NEG_PREFIXES = ("un", "non")  # "unregulated"; not "in"/"dis": "inform" is no opposite of "form"
ANTONYMS: dict[str, frozenset[str]] = {}
for _a, _b in _ANTONYMS:
    ANTONYMS[_a] = ANTONYMS.get(_a, frozenset()) | {_b}
    ANTONYMS[_b] = ANTONYMS.get(_b, frozenset()) | {_a}

# "one" is left out: "one of the", "no one", "the one" are not numbers
_NUMBER_WORDS = {"two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                 "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20",
                 "hundred": "100", "thousand": "1000", "first": "1", "second": "2", "third": "3", "fourth": "4",
                 "fifth": "5", "sixth": "6", "seventh": "7", "eighth": "8", "ninth": "9", "tenth": "10",
                 "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
                 "eighteen": "18", "nineteen": "19", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
                 "seventy": "70", "eighty": "80", "ninety": "90", "eleventh": "11", "twelfth": "12",
                 "thirteenth": "13", "fourteenth": "14", "fifteenth": "15", "sixteenth": "16", "seventeenth": "17",
                 "eighteenth": "18", "nineteenth": "19", "twentieth": "20", "twenty-first": "21"}

_TOKEN = re.compile(r"[A-Za-z]+|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d{3})*(?:\.\d+)?")
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")  # "[1]", "[2, 3]": citation markers, not numbers
_SPACED_NUMBER = re.compile(r"(?<=\d) ([.,]) (?=\d)")
_LEADING_ZEROS = re.compile(r"^0+(?=\d)")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.I)
_SPEECH = (r"(?:said|says|told|tells|warned|warns|argued|argues|added|adds|noted|notes|stated|states|announced|"
           r"insisted|claimed|claims|urged|urges|accused|accuses|described|praised|criticised|criticized|blamed|"
           r"explained|conceded|admitted|acknowledged|predicted|wrote|called|calls)")
_NAME = r"((?:[A-Z][a-z'’-]+\.?|[A-Z]\.)(?:\s+(?:[A-Z][a-z'’-]+\.?|[A-Z]\.))*)"  # "Dr. Helen Ray", "J. Smith"
#: who says what: "Ingrid Salcombe, the chief executive, said", "said Anders Mwangi", "according to Dr Ray"; the
#: verbs are found first and the name looked for next to each, so a long run of capitalised words costs linear time
_SPEECH_VERB = re.compile(r"\b" + _SPEECH + r"\b|\b[Aa]ccording to\b")
_NAME_BEFORE = re.compile(_NAME + r"(?:\s*,[^,.;]{1,80},)?\s+$")
_NAME_AFTER = re.compile(r"\s+" + _NAME)
_QUOTED = re.compile(r"[\"“”]([^\"“”]{3,200})[\"“”]")
_ACRONYM = re.compile(r"\b[A-Z]{2,}s?\b")  # "NASA", "BBC", "NGOs"
_PROPER = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}")


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer  # PyStemmer (Snowball), already used by the retrieval server's BM25

    return Stemmer.Stemmer("english")


#: abbreviations and British spellings, mapped before stemming ("km" / "kilometres", "colour" / "color")
_SPELLINGS = {
    "km": "kilometer", "kms": "kilometers", "kg": "kilogram", "kgs": "kilograms", "cm": "centimeter",
    "mm": "millimeter", "lb": "pound", "lbs": "pounds", "hr": "hour", "hrs": "hours", "mins": "minutes",
    "sec": "second", "secs": "seconds", "yr": "year", "yrs": "years", "approx": "approximately", "govt": "government",
    "dept": "department", "programme": "program", "programmes": "programs", "catalogue": "catalog",
    "analyse": "analyze", "analysed": "analyzed", "defence": "defense", "offence": "offense", "licence": "license",
    "grey": "gray", "aluminium": "aluminum", "tyre": "tire", "tyres": "tires", "mould": "mold", "plough": "plow",
    "jewellery": "jewelry", "sceptical": "skeptical", "practise": "practice", "practised": "practiced",
}
_BRITISH_OUR = re.compile(r"^(colo|favo|hono|behavio|neighbo|labo|flavo|humo|harbo|rumo|vapo|armo|endeavo|savo|valo"
                          r"|vigo|odo|tumo|splendo|fervo|rigo|ardo|parlo)ur(?=(?:s|ed|ing|ite|ites|ful|less|able|hood|ly)?$)")
_BRITISH_RE = re.compile(r"^(cent|met|lit|theat|kilomet|centimet|millimet|fib|calib|spect|meag|lust|somb)re(?=(?:s|d)?$)")
_BRITISH_ISE = re.compile(r"(?<=\w{3})is(?=(?:e|es|ed|ing|ation|ations|er|ers)$)")
_ISE_WORDS = frozenset("""advertise exercise compromise surprise promise premise franchise enterprise merchandise expertise
supervise televise revise devise disguise concise precise otherwise likewise clockwise paradise chastise despise
improvise incise excise apprise comprise demise reprise noise poise praise raise arise rise wise cruise bruise
""".split())


def _american(word: str) -> str:
    if word in _SPELLINGS:
        return _SPELLINGS[word]
    if len(word) < 5:
        return word
    w = _BRITISH_RE.sub(r"\1er", _BRITISH_OUR.sub(r"\1r", word))
    base = re.sub(r"(?:es|ed|ing|ation|ations|er|ers)$", "e", w)
    if base not in _ISE_WORDS and w not in _ISE_WORDS:
        w = _BRITISH_ISE.sub("iz", w)
    return w


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stemWord(_american(word))


@lru_cache(maxsize=1)
def _related_stems() -> dict[str, frozenset[str]]:
    """Stems of demonyms and their countries, both ways (built on first use)."""
    out: dict[str, set[str]] = {}
    for a, b in _DEMONYMS.items():
        out.setdefault(_stem(a), set()).add(_stem(b))
        out.setdefault(_stem(b), set()).add(_stem(a))
    return {k: frozenset(v) for k, v in out.items()}


def _fold_accents(text: str) -> str:
    """"Reykjavík" -> "Reykjavik" (model output often drops accents)."""
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def tokens(text: str) -> list[str]:
    """Lower-cased word and number tokens (accents folded)."""
    return [t.lower() for t in _TOKEN.findall(_fold_accents(text))]


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


def speakers(text: str) -> set[str]:
    """The people ``text`` quotes or reports, by their last name (lower case): "Peter Lund called it" -> {"lund"}.
    Pronouns ("He said") are nobody in particular."""
    out = set()
    for verb in _SPEECH_VERB.finditer(text):
        names = [_NAME_AFTER.match(text, verb.end())]
        if not verb.group().lower().startswith("according"):
            names.append(_NAME_BEFORE.search(text, max(0, verb.start() - 160), verb.start()))
        for m in names:
            if m:
                last = m.group(1).split()[-1].strip(".").lower()
                if last not in STOPWORDS and len(last) > 2:
                    out.add(last)
    return out


def _numeric_text(text: str) -> str:
    return _SPACED_NUMBER.sub(r"\1", _ORDINAL.sub(r"\1", _CITATION.sub(" ", text)))  # "23 , 768" -> "23,768"


def _number_value(m: str) -> str:
    v = m.replace(",", "")
    if "." in v:
        v = v.rstrip("0").rstrip(".")
    return _LEADING_ZEROS.sub("", v)  # "08" in "2:21:08" is the 8 of "8 seconds"; "0.5" stays


def numbers(text: str) -> set[str]:
    """Numbers in ``text``, normalised (``1,000`` -> ``1000``, ``4th`` -> ``4``, ``four`` -> ``4``)."""
    text = _numeric_text(text)
    out = {_number_value(m) for m in _NUMBER.findall(text)}
    for t in tokens(text):
        if t in _NUMBER_WORDS:
            out.add(_NUMBER_WORDS[t])
    return out


def number_units(text: str) -> dict[str, set[str]]:
    """Each written number under its unit, the first two content words within four words after it: "winds of 148
    kilometres per hour" -> {"kilomet per": {"148"}}; "410 daily trains" and "140,000 daily commuters" differ."""
    text = _numeric_text(text)
    out: dict[str, set[str]] = {}
    for m in _NUMBER.finditer(text):
        unit = []
        for t in tokens(text[m.end():m.end() + 64])[:4]:
            if t[0].isdigit():
                break
            if t not in STOPWORDS and len(t) > 1:
                unit.append(_stem(t))
                if len(unit) == 2:
                    break
        if unit:
            out.setdefault(" ".join(unit), set()).add(_number_value(m.group()))
    return out


@lru_cache(maxsize=16384)
def _analyse(sentence: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """A context sentence's content stems (generic words included, in order) and numbers, cached by text."""
    return tuple(content_stems(sentence, generic=True)), frozenset(numbers(sentence))


# ---------------------------------------------------------------------------------------------- splitting

# A sentence ends after . ! ? and a space; or after . ! ? glued to a capitalised word ("year.Scientific
# American", common in scraped text); or at a line break.
_SENT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[A-Z0-9])|(?<=[a-z0-9)\"][.!?])(?=[A-Z][a-z])|\n+")
# answers may be lower-cased ("me too ! it was ..."): any . ! ? followed by space ends a sentence
_ANSWER_SENT = re.compile(r"(?<=[.!?])\s+|(?<=[a-z0-9)\"][.!?])(?=[A-Z][a-z])|\n+")
_ABBREV = re.compile(r"(?:\b(?:[A-Za-z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|No|vs|etc|e\.g|i\.e|U\.S|Inc|Ltd|Co))\.$")
_CLAUSE = re.compile(
    r"\s*(?:,\s*(?:but|and|while|whereas|although|though|so|yet)\s+|;\s*|\s+but\s+|,?\s*\bwhich\s+|,?\s+because\s+"
    r"|\s+and\s+(?=(?:i|he|she|it|they|we|you|the|this|that|there|its|his|her|their)\b))",
    re.I,
)
_APOS = r"\s?'?\s?"  # model output is often tokenised: "i ' m", "didn ' t", "it ' s"
# interjections and reactions in front of a statement ("yes ,", "that ' s cool !"): not claims
_INTERJECTION = re.compile(
    r"^(?:(?:(?:yes|yeah|yep|oh|wow|ok|okay|exactly|indeed|haha|lol|hmm|me too|i agree|i see|agreed)\b\s*[,.!]?"
    r"|(?:well|sure|true|really|right|definitely|absolutely|totally)\s*[,.!]"
    rf"|that{_APOS}s\s(?:so\s|very\s|really\s)?(?:true|right|cool|interesting|great|awesome|funny|amazing|neat|"
    r"good to (?:know|hear)|crazy|wild|sad|nice)\b\s*[,.!]?)\s*)+",
    re.I,
)
# framings that report a fact as heard, known or believed ("i do know that X", "i ' ve heard that X",
# "i didn ' t realize X", "i like that X"): X is the claim
_HEDGE = re.compile(
    r"^(?:(?:i|we)\s(?:do\s|also\s|actually\s|did\s|really\s|just\s)?(?:know|think|believe|heard|read|learned|guess"
    r"|remember|understand|bet)\s(?:that\s)?"
    rf"|(?:i|we)(?:{_APOS}ve|\shave)\s(?:also\s|actually\s|always\s)?(?:heard|read|learned|seen)\s(?!of\b|about\b)(?:that\s)?"
    rf"|(?:i|we)\s(?:didn{_APOS}t|did\sn{_APOS}t|did not|never)\s(?:know|realize|realise|think)\s(?:that\s)?"
    rf"|(?:i|we)\s(?:can{_APOS}t|cannot|can not|could ?n{_APOS}t)\sbelieve\s(?:that\s)?"
    r"|(?:i|we)\s(?:like|love|enjoy)\s(?:that|how)\s"
    r"|did you know\s(?:that\s)?|do you know\s(?:that\s)?"
    rf"|i{_APOS}m not sure(?: about that)?\s?,?\s?but\s)",
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
            stripped = _INTERJECTION.sub("", clause).strip(" ,;:-")
            stripped = _HEDGE.sub("", stripped).strip(" ,;:-")
            if not stripped or _PERSONAL.match(stripped) or not (content_stems(stripped) or numbers(stripped)):
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
    novel_generic: list[str] = field(default_factory=list)   # generic words ("popular", "originally") found nowhere
    ordered_pair_cover: float = 1.0  # share of adjacent known-word pairs found in that order in a context sentence
    bigram_cover: float = 1.0        # share of the claim's word bigrams (function words kept) found in a context
    number_conflicts: list[str] = field(default_factory=list)  # "95 kilomet per/148": its best sentence says otherwise
    speaker_conflicts: list[str] = field(default_factory=list)  # "amarh/salcombe": words given to another speaker
    absolute: list[str] = field(default_factory=list)  # "all", "every" ... that the best sentence's window does not say
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
        analysed = [_analyse(s) for s in self.sentences]
        self.sentence_stems = [set(seq) for seq, _ in analysed]
        self.sentence_numbers = [set(nums) for _, nums in analysed]
        capped = len(self.sentences) >= max_sentences
        # every word of the contexts is in some sentence unless the sentence cap cut them
        self.stems = set(content_stems(joined, generic=True)) if capped else set().union(*self.sentence_stems)
        self.given = set(content_stems(extra, generic=True)) - self.stems  # the question: neither support nor novel
        self.numbers = numbers(joined)
        self.lowered = " ".join(joined.split()).casefold()
        self.proper = {w.lower() for w in _PROPER.findall(joined)} - STOPWORDS
        self.pairs: set[tuple[str, str]] = set()
        self.ordered_pairs: set[tuple[str, str]] = set()
        for seq, _ in analysed:
            for a in range(len(seq)):
                for b in range(a + 1, min(len(seq), a + 1 + window)):
                    self.ordered_pairs.add((seq[a], seq[b]))
                    self.pairs.add((seq[a], seq[b]))
                    self.pairs.add((seq[b], seq[a]))
        self.bigrams: set[tuple[str, str]] = set()
        for sent in self.sentences:
            words = tokens(sent)
            self.bigrams.update(pairwise(words))
        self.given_words = set(tokens(extra))
        self._prefixes = sorted(self.stems)
        df = Counter(w for stems in self.sentence_stems for w in stems)
        n = max(1, len(self.sentences))
        self.idf = {w: math.log(1.0 + n / c) for w, c in df.items()}

    def candidates(self, claims: Sequence[str], *, k: int = 3, ratio: float = 0.5) -> list[list[int]]:
        """For each claim, the context sentences worth embedding (a lexical prefilter, BM25-like).

        A sentence scores the IDF weights of the content stems (so lemmas: "employs" meets "employment") and the
        numbers it shares with the claim. Each claim keeps its best ``k`` sentences with a score of at least
        ``ratio`` times its best; a claim that shares nothing with any sentence keeps none. O(claims x sentences)."""
        out = []
        for claim in claims:
            stems = set(content_stems(claim, generic=True))
            nums = numbers(claim)
            scored = []
            for j, sent_stems in enumerate(self.sentence_stems):
                score = sum(self.idf.get(w, 0.0) for w in stems & sent_stems)
                score += sum(1.0 for x in nums & self.sentence_numbers[j])
                if score > 0:
                    scored.append((score, j))
            scored.sort(key=lambda t: (-t[0], t[1]))
            keep = [j for score, j in scored[:k] if score >= ratio * scored[0][0]] if scored else []
            out.append(keep)
        return out

    def known(self, stem: str) -> bool:
        """A stem found in the evidence, or a prefix of one ("beet" / "beetroot")."""
        if stem in self.stems:
            return True
        if len(stem) < 4:
            return False
        import bisect

        i = bisect.bisect_left(self._prefixes, stem)
        if i < len(self._prefixes) and self._prefixes[i].startswith(stem):
            return True
        if any(related in self.stems for related in _related_stems().get(stem, ())):
            return True
        # a word derived from a known one: "European" / "Europe", "Italian" / "Italy", "northern" / "north"
        for k in range(4, len(stem) - 1):
            if stem[k:] in _DERIVED and (stem[:k] in self.stems or any(stem[:k] + v in self.stems for v in "aeiouy")):
                return True
        return False

    def assess(self, claims: Sequence[str], claim_vecs: np.ndarray, sentence_vecs: np.ndarray,
               rows: Sequence[Sequence[int]] | None = None) -> list[ClaimEvidence]:
        """Evidence for each claim (``claim_vecs`` and ``sentence_vecs`` are unit vectors, one row each).

        ``rows``: for each claim, the sentences it is compared with (as :meth:`candidates` gives them), with
        ``sentence_vecs`` then indexed by sentence number (rows of sentences never compared may be anything);
        default: every sentence."""
        n_sent = len(self.sentences)
        sims = claim_vecs @ sentence_vecs.T if n_sent and len(sentence_vecs) else np.zeros((len(claims), 0), np.float32)
        out = []
        for i, claim in enumerate(claims):
            allowed = list(range(sims.shape[1])) if rows is None else [j for j in rows[i] if j < sims.shape[1]]
            if allowed:
                j = max(allowed, key=lambda r: (float(sims[i, r]), -r))
                cos = float(sims[i, j])
                ev = ClaimEvidence(claim, self.owner[j], self.sentences[j], cos if np.isfinite(cos) else 0.0)
                best_text = self.sentences[j]
                # the best sentence with its neighbours in the same context: "She was born in 1867" after
                # "Marie Curie was a physicist" covers "Marie Curie was born in 1867"
                window = [k for k in (j - 1, j, j + 1) if 0 <= k < len(self.sentences) and self.owner[k] == self.owner[j]]
                best_stems = set().union(*(self.sentence_stems[k] for k in window))
                best_numbers = set().union(*(self.sentence_numbers[k] for k in window))
                best_only = self.sentence_stems[j]
            else:
                ev = ClaimEvidence(claim, None, None, 0.0)
                best_stems, best_numbers, best_text, window, best_only = set(), set(), "", [], set()
            words = tokens(claim)
            terms = content_stems(claim)
            claim_numbers = numbers(claim)
            ev.n_terms = len(terms)
            if terms or claim_numbers:  # numbers count as terms: "1945" alone is a claim about a date
                n = len(terms) + len(claim_numbers)
                ev.novel = [w for w in terms if not self.known(w) and w not in self.given]
                ev.support = (sum(self.known(w) for w in terms) + len(claim_numbers & self.numbers)) / n
                ev.best_cover = (sum(w in best_stems for w in terms) + len(claim_numbers & best_numbers)) / n
            # capitalised words inside the claim: its first word is capitalised whatever it is ("According to ...",
            # "Trucks above 7.5 tonnes ..."); a name there still counts as a novel term
            capitalised = {w.lower() for w in _PROPER.findall(claim)} | {w.lower() for w in _ACRONYM.findall(claim)}
            ev.novel_entities = sorted({w for w in capitalised if w not in STOPWORDS and not self.known(_stem(w))
                                        and _stem(w) not in self.given})
            ev.bad_numbers = sorted(claim_numbers - self.numbers)
            all_terms = content_stems(claim, generic=True)
            ev.novel_generic = [w for w in dict.fromkeys(all_terms) if w not in terms and not self.known(w)
                                and w not in self.given]
            seq = [w for w in all_terms if w in self.stems]
            pairs = [(a, b) for a, b in zip(seq, seq[1:]) if a != b]
            # a pair also counts across a sentence that opens with a pronoun and the one before it in the best window
            # ("Marie Curie was a physicist. She was born in Warsaw." covers curie/born); words of two unrelated
            # neighbouring sentences do not pair up
            cross = set()
            for k in window:
                if k - 1 in window and _PRONOUN_START.match(self.sentences[k]):
                    for a in self.sentence_stems[k - 1]:
                        for b in self.sentence_stems[k]:
                            cross.update(((a, b), (b, a)))
            ev.pair_cover = sum(p in self.pairs or p in cross for p in pairs) / len(pairs) if pairs else 1.0
            ev.ordered_pair_cover = sum(p in self.ordered_pairs for p in pairs) / len(pairs) if pairs else 1.0
            bigrams = [b for b in pairwise(words) if b[0] not in self.given_words or b[1] not in self.given_words]
            ev.bigram_cover = sum(b in self.bigrams for b in bigrams) / len(bigrams) if bigrams else 1.0
            best_words = tokens(best_text)
            # a quotation the contexts give word for word is the source's own words: its "not" is no cue
            said = _QUOTED.sub(lambda m: " " if " ".join(m.group(1).split()).casefold() in self.lowered else m.group(0),
                               claim)
            ev.negation_mismatch = bool(best_text) and (any(w in NEGATION_CUES for w in tokens(said))
                                                        != any(w in NEGATION_CUES for w in best_words))
            if claim_numbers and best_text:
                # "winds of 95 kilometres per hour" against "winds of up to 148 kilometres per hour": the same unit
                # with another number in the best sentence, and the claim's number nowhere near it
                best_units = number_units(best_text)
                ev.number_conflicts = [f"{n} {u}/{'/'.join(sorted(best_units[u]))}"
                                       for u, ns in number_units(claim).items() if u in best_units
                                       for n in sorted(ns) if n not in best_numbers and n not in best_units[u]]
            window_words = set().union(*(tokens(self.sentences[k]) for k in window))
            ev.absolute = sorted(set(words) & _ABSOLUTE - window_words)
            # names the contexts capitalise mid-sentence only: "Help announced ..." opens a sentence, it is nobody
            claim_speakers = speakers(claim) & self.proper if best_text else set()
            if claim_speakers:
                # "Daniel Amarh said the deal ..." where the best sentence has "Ingrid Salcombe ... said the deal":
                # the words belong to someone else, and the claim's speaker is not in that sentence
                others = (speakers(best_text) & self.proper) - claim_speakers
                ev.speaker_conflicts = [f"{c}/{o}" for c in sorted(claim_speakers) if c not in best_words
                                        for o in sorted(others)]
            claim_stems = {_stem(w) for w in words}
            # the opposite word must be in the best sentence itself (like the negation): "last year's winner" is no
            # opposite of "her first victory" in the sentence next to it; the claim's own word must be absent from
            # the whole window
            for w in claim_stems:
                for opposite in ANTONYMS.get(w, ()):
                    if opposite in best_only and w not in best_stems:
                        ev.antonyms.append(f"{w}/{opposite}")
                # negative prefixes: "regulated" where the best sentence says "unregulated", and the reverse
                if len(w) >= 4 and w not in best_stems:
                    for pre in _NEG_PREFIXES:
                        if pre + w in best_only:
                            ev.antonyms.append(f"{w}/{pre}{w}")
                        elif w.startswith(pre) and len(w) - len(pre) >= 4 and w[len(pre):] in best_only:
                            ev.antonyms.append(f"{w}/{w[len(pre):]}")
            if ev.antonyms and ev.negation_mismatch:
                # a double negation: "kept all the shops open" against "promised not to close any of the shops"
                # agrees; the opposite word and the negation cancel out and neither is a cue
                ev.antonyms, ev.negation_mismatch = [], False
            counts = Counter(w for w in words if w in self.proper)
            ev.repeated_entity = any(n > 1 for n in counts.values())
            out.append(ev)
        return out
