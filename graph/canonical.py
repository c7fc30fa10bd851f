"""Entity canonicalisation: one key per entity, whatever its case, article, plural or alias.

Plain functions over strings (no spaCy): :func:`normalize` makes the key of a mention,
:func:`person_key` drops middle initials of a person's name, :func:`find_acronyms` finds
acronyms the text defines ("International Business Machines (IBM)"), :func:`find_aka`
finds "X, also known as Y" aliases. :class:`AliasTable` resolves keys across documents.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable

__all__ = ["AliasTable", "find_acronyms", "find_aka", "normalize", "person_key", "strip_qualifier"]

_LEADING = ("the ", "a ", "an ")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})
_EDGE_PUNCT = " \t\n\"'`.,;:!?()[]{}<>-_*/\\|"
_SPACE = re.compile(r"\s+")
_QUALIFIER = re.compile(r"\s*\([^()]{1,60}\)\s*$")
_AKA = re.compile(
    r"^\s*,?\s*\(?\s*(?:(?:also|better|commonly|formerly|simply|otherwise)\s+)?"
    r"(?:known\s+as|called|trading\s+as|doing\s+business\s+as|a\.?k\.?a\.?)\s*$",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """The key of a surface form: NFKC, case-folded, straight quotes, no leading article, no
    possessive ``'s``, no punctuation at either end, single spaces.

    >>> normalize("The  International Business Machines's")
    'international business machines'

    O(len(text)).
    """
    s = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    s = _SPACE.sub(" ", s).strip(_EDGE_PUNCT)
    s = s.removesuffix("'s")
    for art in _LEADING:
        if s.startswith(art) and len(s) > len(art):
            s = s[len(art):]
            break
    return s.strip(_EDGE_PUNCT)


def strip_qualifier(title: str) -> str:
    """A title without a trailing parenthetical qualifier: ``"Mercury (planet)"`` -> ``"Mercury"``."""
    stripped = _QUALIFIER.sub("", title)
    return stripped if stripped.strip() else title


def person_key(key: str) -> str:
    """Drop middle initials from a normalised person name: ``"stephen r. covey"`` -> ``"stephen covey"``."""
    parts = key.split(" ")
    if len(parts) < 3:
        return key
    kept = [parts[0], *(p for p in parts[1:-1] if not re.fullmatch(r"\w\.?", p)), parts[-1]]
    return " ".join(kept)


def _long_form(short: str, candidate: str) -> str | None:
    """Schwartz & Hearst (2003): the shortest end of ``candidate`` whose characters spell ``short``,
    the first character of ``short`` starting a word. None when it does not match."""
    s, lpos = len(short) - 1, len(candidate) - 1
    while s >= 0:
        c = short[s].lower()
        if not c.isalnum():
            s -= 1
            continue
        while lpos >= 0 and (candidate[lpos].lower() != c or (s == 0 and lpos > 0 and candidate[lpos - 1].isalnum())):
            lpos -= 1
        if lpos < 0:
            return None
        lpos -= 1
        s -= 1
    start = candidate.rfind(" ", 0, lpos + 1) + 1
    return candidate[start:]


_PAREN = re.compile(r"\(\s*([^()]{2,10}?)\s*\)")


def find_acronyms(sentence: str) -> list[tuple[str, str]]:
    """``(acronym, long form)`` pairs a sentence defines in the form "long form (ACRONYM)".

    The acronym has 2-10 characters, at most two words and a capital letter; the long form is found
    among the words before the parenthesis with the Schwartz & Hearst matching rule and must be
    longer than the acronym. O(len(sentence)).

    >>> find_acronyms("He joined International Business Machines (IBM) in 1990.")
    [('IBM', 'International Business Machines')]
    """
    found = []
    for m in _PAREN.finditer(sentence):
        short = m.group(1).strip()
        if len(short.split()) > 2 or not any(c.isupper() for c in short) or not short[0].isalnum():
            continue
        words = sentence[: m.start()].rstrip().split()
        limit = min(len(short) + 5, 2 * len(short))
        candidate = " ".join(words[-limit:]).strip(_EDGE_PUNCT)
        long = _long_form(short, candidate)
        if not long:
            continue
        long = long.strip(_EDGE_PUNCT)
        if len(long) <= len(short) or short.lower() in long.lower().split() or len(long.split()) < 2:
            continue
        found.append((short, long))
    return found


def find_aka(sentence: str, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of spans (indexes into ``spans``, sorted by start) where the text between
    span i and span j reads "also known as", "trading as", "a.k.a." ... so that j is another name of i.
    O(n) in the number of spans."""
    ordered = sorted(enumerate(spans), key=lambda p: p[1])
    pairs = []
    for (i, (_, e1)), (j, (s2, _)) in itertools.pairwise(ordered):
        if 0 < s2 - e1 <= 40 and _AKA.match(sentence[e1:s2]):
            pairs.append((i, j))
    return pairs


class AliasTable:
    """Aliases defined by documents: alias key -> canonical key -> the documents that define it.

    :meth:`resolve` maps a key to its canonical key: the canonical form most documents agree on
    (ties: the lexicographically smallest), followed at most 3 steps. An alias is always shorter than
    its canonical form, so resolution has no cycles. The resolution depends only on the set of
    documents, never on the order they came in.
    """

    def __init__(self, data: dict[str, dict[str, list[str]]] | None = None):
        self._t: dict[str, dict[str, set[str]]] = {
            a: {c: set(ds) for c, ds in cs.items()} for a, cs in (data or {}).items()
        }
        self._cache: dict[str, str] = {}

    def dump(self) -> dict[str, dict[str, list[str]]]:
        return {a: {c: sorted(ds) for c, ds in cs.items()} for a, cs in sorted(self._t.items())}

    def __len__(self) -> int:
        return len(self._t)

    def keys(self) -> set[str]:
        return set(self._t)

    def add(self, doc_id: str, pairs: Iterable[tuple[str, str]]) -> None:
        for alias, canonical in pairs:
            if alias and canonical and alias != canonical and len(alias) < len(canonical):
                self._t.setdefault(alias, {}).setdefault(canonical, set()).add(doc_id)
        self._cache.clear()

    def remove(self, doc_id: str, pairs: Iterable[tuple[str, str]]) -> None:
        for alias, canonical in pairs:
            docs = self._t.get(alias, {}).get(canonical)
            if docs is None:
                continue
            docs.discard(doc_id)
            if not docs:
                del self._t[alias][canonical]
                if not self._t[alias]:
                    del self._t[alias]
        self._cache.clear()

    def _step(self, key: str) -> str | None:
        cands = self._t.get(key)
        if not cands:
            return None
        return min(cands, key=lambda c: (-len(cands[c]), c))

    def resolve(self, key: str) -> str:
        """The canonical key of ``key`` (``key`` itself when it is no alias). O(1) amortised."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = key
        for _ in range(3):
            nxt = self._step(out)
            if nxt is None:
                break
            out = nxt
        self._cache[key] = out
        return out

    def snapshot(self) -> dict[str, str]:
        """alias key -> resolved key, for every alias key (to diff resolutions before and after a write)."""
        return {a: self.resolve(a) for a in self._t}
