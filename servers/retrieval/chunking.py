"""Structure-aware chunking of a :class:`~servers.retrieval.loaders.LoadedDocument`.

Algorithm:

1. The blocks are grouped into *sections*: a heading opens a new section and
   updates the heading path (a stack of enclosing headings by level). The
   heading text itself is not put into any chunk; it travels in
   ``Chunk.heading_path``.
2. Each block of a section becomes one *unit* if it fits in ``max_tokens``.
   A block that does not fit is split: prose (paragraphs) at sentence
   boundaries (spaCy's rule-based sentencizer), lists / code / tables at line
   boundaries; a piece that still does not fit is cut into windows of whole
   words, and a single word that does not fit into character windows. Windows
   hold at most ``max_tokens - overlap_tokens`` so the overlap fits before them.
3. Units of one section are packed greedily into chunks while the estimated
   token count (sum of the units' counts) fits; every chunk of more than one
   unit is then measured with ``count_tokens`` and shrunk if the estimate was
   optimistic (e.g. byte-level BPE pays for the joins), so each chunk is
   guaranteed to be ``<= max_tokens``.
4. When a section needs several chunks, each next chunk starts with the last
   sentences (lines, for lists / code / tables; the last words, inside a
   word-windowed sentence) of the previous chunk totalling
   ``<= overlap_tokens``, and never with the whole previous chunk. Overlap
   never crosses a heading.

Every chunk's ``text`` equals ``doc.text[start_char:end_char]``: chunks are
contiguous slices of the document text, so the offsets can be used to
highlight or re-read the source.

Cost: ``count_tokens`` is called once per block (skipped for a block with
more words than ``max_tokens``, which cannot fit), once per sentence or line
of over-long blocks, a few times per window (galloping search seeded with the
previous window's size), and once per multi-unit chunk. Text is thus
tokenised about twice in total; a ~300-word abstract is chunked in a few ms,
most of it in the tokenizer. The first call loads spaCy (about a second):
call :func:`split_sentences` once at start-up to pay that early.

The output is deterministic for a given document, counter and settings.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from servers.retrieval.loaders import BLOCK_SEPARATOR, Block, LoadedDocument

__all__ = ["Chunk", "chunk_document", "split_sentences"]

_WORD_RE = re.compile(r"\S+")
_PROSE_KINDS = frozenset({"paragraph"})
# No real tokenizer averages more characters per token than this; text longer than
# max_tokens * this is split without being counted whole first.
_MAX_CHARS_PER_TOKEN = 64


class Chunk(BaseModel):
    """A retrievable piece of a document."""

    text: str
    position: int = Field(description="0-based order of the chunk in its document.")
    heading_path: list[str] = Field(default_factory=list, description="Enclosing headings, outermost first.")
    start_char: int = Field(description="Offset into LoadedDocument.text where the chunk starts.")
    end_char: int = Field(description="Offset into LoadedDocument.text where the chunk ends (exclusive).")
    tokens: int = Field(description="Token count of ``text`` as measured by the count_tokens function.")
    page: int | None = Field(default=None, description="1-based page where the chunk starts (PDF only).")


# --------------------------------------------------------------------------- sentences

_NLP = None
_NLP_LOCK = threading.Lock()


def _sentencizer():
    """spaCy blank English pipeline with the rule-based sentencizer, built once."""
    global _NLP
    if _NLP is None:
        with _NLP_LOCK:
            if _NLP is None:
                import spacy

                nlp = spacy.blank("en")
                nlp.add_pipe("sentencizer")
                _NLP = nlp
    return _NLP


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


_SEGMENT_CHARS = 100_000


def _segments(text: str) -> list[tuple[int, int]]:
    """Cut very long text into pieces of about ``_SEGMENT_CHARS`` at whitespace (bounded memory)."""
    if len(text) <= _SEGMENT_CHARS:
        return [(0, len(text))]
    out, start = [], 0
    while len(text) - start > _SEGMENT_CHARS:
        cut = start + _SEGMENT_CHARS
        nl = text.rfind("\n", start + _SEGMENT_CHARS // 2, cut)
        if nl < 0:
            nl = text.rfind(" ", start + _SEGMENT_CHARS // 2, cut)
        cut = nl + 1 if nl >= 0 else cut
        out.append((start, cut))
        start = cut
    out.append((start, len(text)))
    return out


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Return ``(start, end)`` character spans of the sentences of ``text``.

    Uses spaCy's rule-based sentencizer (loaded once, on first use). Spans are
    stripped of surrounding whitespace; empty ones are dropped. Text longer
    than 100,000 characters is sentencized in whitespace-aligned segments.
    """
    nlp = _sentencizer()
    sentencizer = nlp.get_pipe("sentencizer")
    spans = []
    for seg_start, seg_end in _segments(text):
        segment = text[seg_start:seg_end]
        for sent in sentencizer(nlp.make_doc(segment)).sents:
            start, end = _strip_span(segment, sent.start_char, sent.end_char)
            if start < end:
                spans.append((seg_start + start, seg_start + end))
    return spans


def _split_lines(text: str) -> list[tuple[int, int]]:
    spans = []
    pos = 0
    for line in text.split("\n"):
        start, end = _strip_span(text, pos, pos + len(line))
        if start < end:
            spans.append((start, end))
        pos += len(line) + 1
    return spans


def _count_words(text: str, stop: int) -> int:
    """Number of whitespace-separated words in ``text``, counting no further than ``stop``."""
    n = 0
    for _ in _WORD_RE.finditer(text):
        n += 1
        if n >= stop:
            break
    return n


# --------------------------------------------------------------------------- units


@dataclass(slots=True)
class _Unit:
    """A contiguous span of the document text that is never split by packing."""

    start: int
    end: int
    tokens: int
    page: int | None
    kind: str  # block kind, or "sentence" / "line" / "window"
    tail_cache: list[_Unit] | None = field(default=None, repr=False)


class _Chunker:
    def __init__(self, text: str, count_tokens: Callable[[str], int], max_tokens: int, overlap_tokens: int) -> None:
        self.text = text
        self.count = count_tokens
        self.max = max_tokens
        self.overlap = overlap_tokens
        try:
            # Fixed cost of any text (e.g. [CLS]/[SEP]); packing estimates subtract it per unit.
            self.base = max(0, int(count_tokens("")))
        except Exception:  # noqa: BLE001 - a counter may refuse empty input
            self.base = 0

    # -- measuring ---------------------------------------------------------

    @staticmethod
    def may_fit(n_chars: int, limit: int) -> bool:
        """False when ``n_chars`` characters certainly exceed ``limit`` tokens (saves a count)."""
        return n_chars <= limit * _MAX_CHARS_PER_TOKEN

    def measure(self, start: int, end: int) -> int:
        return self.count(self.text[start:end])

    def estimate(self, units: list[_Unit]) -> int:
        return sum(u.tokens for u in units) - self.base * (len(units) - 1)

    # -- splitting ---------------------------------------------------------

    def units_for_block(self, block: Block, start: int) -> list[_Unit]:
        end = start + len(block.text)
        # Every word costs at least one token: a block with more words than max_tokens cannot
        # fit, so skip counting it whole (saves one tokenisation pass over long paragraphs).
        if self.may_fit(end - start, self.max) and _count_words(block.text, self.max + 1) <= self.max:
            tokens = self.measure(start, end)
            if tokens <= self.max:
                return [_Unit(start, end, tokens, block.page, block.kind)]
        if block.kind in _PROSE_KINDS:
            return self.split_prose(start, end, block.page)
        units: list[_Unit] = []
        for s, e in _split_lines(block.text):
            s, e = start + s, start + e
            t = self.measure(s, e) if self.may_fit(e - s, self.max) else self.max + 1
            if t <= self.max:
                units.append(_Unit(s, e, t, block.page, "line"))
            elif block.kind == "list":
                units.extend(self.split_prose(s, e, block.page))
            else:
                units.extend(self.split_words(s, e, block.page))
        return units

    def split_prose(self, start: int, end: int, page: int | None) -> list[_Unit]:
        units: list[_Unit] = []
        for s, e in split_sentences(self.text[start:end]):
            s, e = start + s, start + e
            t = self.measure(s, e) if self.may_fit(e - s, self.max) else self.max + 1
            if t <= self.max:
                units.append(_Unit(s, e, t, page, "sentence"))
            else:
                units.extend(self.split_words(s, e, page))
        return units

    @staticmethod
    def _gallop(fits: Callable[[int], bool], cap: int, guess: int) -> int:
        """Largest ``k`` in ``[0, cap]`` with ``fits(k)`` (``fits(0)`` is taken as true).

        ``fits`` must be monotone (true up to some ``k``, false after). Gallops
        from ``guess`` (the previous window's size) and then bisects, so windows
        of similar size cost a handful of calls: ``O(log distance)``.
        """
        if cap <= 0:
            return 0
        good, bad = 0, cap + 1  # fits(good) is true; fits(bad) is false (or bad is past cap)
        probe = min(cap, max(1, guess))
        step = max(1, guess // 16)
        if fits(probe):
            good = probe
            while good < cap:
                probe = min(cap, good + step)
                if fits(probe):
                    good, step = probe, step * 2
                else:
                    bad = probe
                    break
        else:
            bad = probe
            while bad - good > 1:
                probe = max(good + 1, bad - step)
                if fits(probe):
                    good = probe
                    break
                bad, step = probe, step * 2
        while bad - good > 1:
            mid = (good + bad) // 2
            if fits(mid):
                good = mid
            else:
                bad = mid
        return good

    def _fit_counter(self, limit: int) -> tuple[Callable[[int, int], bool], dict[tuple[int, int], int]]:
        """A memoising ``fits(start, end)`` test against ``limit``, and its memo."""
        memo: dict[tuple[int, int], int] = {}

        def fits(start: int, end: int) -> bool:
            key = (start, end)
            if key not in memo:
                memo[key] = self.measure(start, end)
            return memo[key] <= limit

        return fits, memo

    @property
    def window_limit(self) -> int:
        """Size of word/character windows: room is left for the overlap that will precede them."""
        return self.max - self.overlap

    def split_words(self, start: int, end: int, page: int | None) -> list[_Unit]:
        """Cut one over-long sentence into windows of whole words."""
        words = [(m.start(), m.end()) for m in _WORD_RE.finditer(self.text, start, end)]
        limit = self.window_limit
        fits, memo = self._fit_counter(limit)
        units: list[_Unit] = []
        i, guess = 0, limit
        while i < len(words):
            k = 0
            if self.may_fit(words[i][1] - words[i][0], limit):
                # Each word costs at least one token, so a window never holds more than `limit` words.
                cap = min(len(words) - i, limit)
                k = self._gallop(lambda k, i=i: fits(words[i][0], words[i + k - 1][1]), cap, guess)
            if k == 0:  # one word alone is too long (e.g. base64): character windows
                units.extend(self.split_chars(words[i][0], words[i][1], page))
                i += 1
                continue
            s, e = words[i][0], words[i + k - 1][1]
            units.append(_Unit(s, e, memo[(s, e)], page, "window"))
            i, guess = i + k, k
        return units

    def split_chars(self, start: int, end: int, page: int | None) -> list[_Unit]:
        """Cut one over-long word into character windows."""
        units: list[_Unit] = []
        i, guess = start, self.window_limit
        for limit in (self.window_limit, self.max):  # no room for the overlap: use the whole budget
            fits, memo = self._fit_counter(limit)
            while i < end:
                cap = min(end - i, limit * _MAX_CHARS_PER_TOKEN)
                k = self._gallop(lambda k, i=i, fits=fits: fits(i, i + k), cap, guess)
                if k == 0:
                    break
                units.append(_Unit(i, i + k, memo[(i, i + k)], page, "window"))
                i, guess = i + k, k
            if i >= end:
                return units
        raise InvalidInput(
            f"max_tokens={self.max} is too small: a single character counts as {self.measure(i, i + 1)} tokens"
        )

    # -- overlap -----------------------------------------------------------

    def tail_pieces(self, unit: _Unit) -> list[_Unit]:
        """Finer pieces of ``unit`` usable as overlap (sentences, lines or words)."""
        if unit.tail_cache is not None:
            return unit.tail_cache
        pieces: list[_Unit]
        if unit.kind in ("sentence", "line", "window"):
            pieces = [unit]
        elif unit.kind in _PROSE_KINDS:
            spans = split_sentences(self.text[unit.start : unit.end])
            pieces = (
                [unit]
                if len(spans) <= 1
                else [_Unit(unit.start + s, unit.start + e, -1, unit.page, "sentence") for s, e in spans]
            )
        else:
            spans = _split_lines(self.text[unit.start : unit.end])
            pieces = (
                [unit]
                if len(spans) <= 1
                else [_Unit(unit.start + s, unit.start + e, -1, unit.page, "line") for s, e in spans]
            )
        unit.tail_cache = pieces
        return pieces

    def overlap_units(self, members: list[_Unit]) -> list[_Unit]:
        """The last sentences of ``members`` totalling ``<= overlap_tokens``.

        Never the whole of ``members``: the next chunk must bring something new
        before it repeats everything.
        """
        if self.overlap <= 0 or not members:
            return []
        taken: list[_Unit] = []
        budget = self.overlap
        for m_index in range(len(members) - 1, -1, -1):
            pieces = self.tail_pieces(members[m_index])
            for p_index in range(len(pieces) - 1, -1, -1):
                if m_index == 0 and p_index == 0:
                    return taken or self._word_tail([], members[0])
                piece = pieces[p_index]
                if piece.tokens < 0:
                    piece.tokens = self.measure(piece.start, piece.end)
                cost = piece.tokens - (self.base if taken else 0)
                if cost > budget:
                    if not taken and piece.kind == "window":
                        return self._word_tail([], piece)
                    return taken
                taken.insert(0, piece)
                budget -= cost
        return taken

    def _word_tail(self, taken: list[_Unit], unit: _Unit) -> list[_Unit]:
        """Trailing words of a word window, used when no whole sentence fits the overlap."""
        if taken or unit.kind != "window":
            return taken
        words = [(m.start(), m.end()) for m in _WORD_RE.finditer(self.text, unit.start, unit.end)]
        if len(words) < 2:
            return []
        # Smallest k (>= 1, so not the whole window) such that words[k:] fits the budget.
        lo, hi, best, best_tokens = 1, len(words) - 1, None, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            t = self.measure(words[mid][0], unit.end)
            if t <= self.overlap:
                best, best_tokens, hi = mid, t, mid - 1
            else:
                lo = mid + 1
        if best is None:
            return []
        return [_Unit(words[best][0], unit.end, best_tokens, unit.page, "window")]

    # -- packing -----------------------------------------------------------

    def pack(self, units: list[_Unit]) -> list[tuple[int, int, int, int | None]]:
        """Pack a section's units into ``(start, end, tokens, page)`` chunks."""
        out: list[tuple[int, int, int, int | None]] = []
        pos = 0
        prev: list[_Unit] = []
        while pos < len(units):
            first = units[pos]
            overlap = self.overlap_units(prev) if prev else []
            while overlap and self.estimate([*overlap, first]) > self.max:
                overlap.pop(0)
            members = [first]
            estimate = self.estimate([*overlap, first])
            j = pos + 1
            while j < len(units) and estimate + units[j].tokens - self.base <= self.max:
                estimate += units[j].tokens - self.base
                members.append(units[j])
                j += 1
            # Verify with the real counter: joins may cost tokens the estimate did not see.
            while True:
                start = overlap[0].start if overlap else members[0].start
                if not overlap and len(members) == 1:
                    tokens = members[0].tokens
                else:
                    tokens = self.measure(start, members[-1].end)
                if tokens <= self.max:
                    break
                if len(members) > 1:
                    members.pop()
                elif overlap:
                    overlap.pop(0)
                else:  # pragma: no cover - a single unit is measured to fit
                    raise AssertionError("unit exceeds max_tokens")
            page = overlap[0].page if overlap else members[0].page
            out.append((start, members[-1].end, tokens, page))
            pos += len(members)
            prev = members
        return out


def _block_offsets(doc: LoadedDocument) -> list[int]:
    """Start offset of each block in ``doc.text``."""
    offsets = []
    cursor = 0
    text = doc.text
    for block in doc.blocks:
        if text.startswith(block.text, cursor):
            start = cursor
        else:
            start = text.find(block.text, cursor)
            if start < 0:
                raise InvalidInput(
                    "document blocks do not match its text; build LoadedDocument with the loaders "
                    "(text must be the blocks joined by blank lines)"
                )
        offsets.append(start)
        cursor = start + len(block.text)
        if text.startswith(BLOCK_SEPARATOR, cursor):
            cursor += len(BLOCK_SEPARATOR)
    return offsets


def chunk_document(
    doc: LoadedDocument,
    *,
    count_tokens: Callable[[str], int],
    max_tokens: int = 256,
    overlap_tokens: int = 32,
) -> list[Chunk]:
    """Split ``doc`` into chunks that follow its structure.

    Args:
        doc: a loaded document (``doc.text`` is its blocks joined by ``"\\n\\n"``).
        count_tokens: the embedding model's token counter (specials included
            if the model adds them; the bound holds for what it returns).
        max_tokens: upper bound on ``count_tokens(chunk.text)``.
        overlap_tokens: budget for the sentences repeated at the start of the
            next chunk when a section is split; 0 disables overlap.

    Returns:
        Chunks in document order, ``position`` 0..n-1; ``chunk.text ==
        doc.text[chunk.start_char:chunk.end_char]``. An empty list if the
        document has no text outside headings.

    Raises:
        InvalidInput: bad limits, or blocks that do not match ``doc.text``.

    Complexity: about ``2 n`` characters tokenised for ``n`` characters of
    prose; ``O(n log w)`` for sentences cut into windows of ``w`` words.
    """
    if max_tokens < 1:
        raise InvalidInput(f"max_tokens must be >= 1, got {max_tokens}")
    if overlap_tokens < 0 or overlap_tokens >= max_tokens:
        raise InvalidInput(f"overlap_tokens must be >= 0 and < max_tokens ({max_tokens}), got {overlap_tokens}")

    blocks = doc.blocks
    if not blocks:
        if not doc.text.strip():
            return []
        start, end = _strip_span(doc.text, 0, len(doc.text))
        blocks = [Block(kind="paragraph", text=doc.text[start:end])]
        doc = doc.model_copy(update={"blocks": blocks})

    chunker = _Chunker(doc.text, count_tokens, max_tokens, overlap_tokens)
    offsets = _block_offsets(doc)

    chunks: list[Chunk] = []
    stack: list[tuple[int, str]] = []  # (level, heading text)
    section: list[_Unit] = []

    def flush() -> None:
        if not section:
            return
        path = [title for _, title in stack]
        for start, end, tokens, page in chunker.pack(section):
            chunks.append(
                Chunk(
                    text=doc.text[start:end],
                    position=len(chunks),
                    heading_path=list(path),
                    start_char=start,
                    end_char=end,
                    tokens=tokens,
                    page=page,
                )
            )
        section.clear()

    for block, start in zip(blocks, offsets, strict=True):
        if not block.text.strip():
            continue
        if block.kind == "heading":
            flush()
            level = block.level if block.level > 0 else 1
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, block.text.strip()))
            continue
        section.extend(chunker.units_for_block(block, start))
    flush()
    return chunks
