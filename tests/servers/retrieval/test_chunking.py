"""Tests for servers.retrieval.chunking: structure, offsets, token bound, overlap."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import InvalidInput
from servers.retrieval.chunking import Chunk, chunk_document, split_sentences
from servers.retrieval.loaders import Block, LoadedDocument, load_file, parse_text

DOCS = Path(__file__).resolve().parents[2] / "data" / "docs"
Counter = Callable[[str], int]

_WORDS = (
    "protein cells patients study results expression increased reduced model analysis clinical risk "
    "receptor gene mice treatment response data effect levels significantly associated human tumor "
    "signaling pathway inhibitor trial cohort mortality infection vaccine antibody dose baseline "
    "the of and in to with for was were that by on as from at is are these we our this which"
).split()


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), f"({rng.randint(1, 999)}%)")
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), f"p={rng.random():.3f}")
    return " ".join(words).capitalize() + "."


def _abstract(seed: int, n_words: int = 300) -> str:
    """A synthetic SciFact-like abstract: one paragraph of about ``n_words`` words."""
    rng = random.Random(seed)
    sentences, total = [], 0
    while total < n_words:
        k = rng.randint(12, 35)
        sentences.append(_sentence(rng, k))
        total += k
    return " ".join(sentences)


def _whitespace_counter(text: str) -> int:
    return len(text.split())


def _train_corpus() -> list[str]:
    corpus = [_abstract(s) for s in range(40)]
    for f in ("guide.md", "page.html", "notes.txt"):
        corpus.append((DOCS / f).read_text(encoding="utf-8"))
    return corpus


def _make_wordpiece_counter() -> Counter:
    """A real BERT-style WordPiece tokenizer trained in-process (adds [CLS]/[SEP])."""
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        _train_corpus(),
        trainers.WordPieceTrainer(vocab_size=3000, special_tokens=["[UNK]", "[CLS]", "[SEP]"], show_progress=False),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return lambda text: len(tok.encode(text).ids)


def _make_bpe_counter() -> Counter:
    """A byte-level BPE tokenizer (GPT-style: whitespace and newlines cost tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        _train_corpus(),
        trainers.BpeTrainer(vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    return lambda text: len(tok.encode(text).ids)


@pytest.fixture(scope="module")
def wordpiece_counter() -> Counter:
    return _make_wordpiece_counter()


@pytest.fixture(scope="module")
def bpe_counter() -> Counter:
    return _make_bpe_counter()


@pytest.fixture(params=["whitespace", "wordpiece", "bpe"])
def counter(request) -> Counter:
    if request.param == "whitespace":
        return _whitespace_counter
    return request.getfixturevalue(f"{request.param}_counter")


def _fixture_docs() -> list[LoadedDocument]:
    return [load_file(DOCS / f, max_bytes=1 << 20) for f in ("guide.md", "page.html", "notes.txt")]


def _long_doc() -> LoadedDocument:
    parts = ["# Study", _abstract(1), "## Methods", _abstract(2, 500), _abstract(3, 120)]
    parts += ["## Results", "- " + "\n- ".join(_sentence(random.Random(i), 20) for i in range(30))]
    parts += ["### Raw", "```\n" + "\n".join(f"row {i} value {i * i}" for i in range(200)) + "\n```"]
    return parse_text("\n\n".join(parts), format="markdown")


def _check_invariants(doc: LoadedDocument, chunks: list[Chunk], count: Counter, max_tokens: int) -> None:
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text.strip(), "empty chunk"
        assert doc.text[c.start_char : c.end_char] == c.text
        assert c.tokens == count(c.text)
        assert c.tokens <= max_tokens
    starts = [c.start_char for c in chunks]
    assert starts == sorted(starts)


def _check_coverage(doc: LoadedDocument, chunks: list[Chunk]) -> None:
    """Every non-space character of every non-heading block lies in some chunk."""
    covered = bytearray(len(doc.text))
    for c in chunks:
        covered[c.start_char : c.end_char] = b"\x01" * (c.end_char - c.start_char)
    pos = 0
    for b in doc.blocks:
        if b.kind != "heading":
            for k, ch in enumerate(b.text):
                if not ch.isspace():
                    assert covered[pos + k], f"character {ch!r} at {pos + k} lost"
        pos += len(b.text) + 2


# --------------------------------------------------------------------------- structure


def test_heading_paths_follow_nesting() -> None:
    doc = load_file(DOCS / "guide.md", max_bytes=1 << 20)
    chunks = chunk_document(doc, count_tokens=_whitespace_counter, max_tokens=256, overlap_tokens=32)
    by_text = {c.text.split("\n")[0][:20]: c.heading_path for c in chunks}
    assert [c.heading_path for c in chunks] == [
        ["Widget Service Guide"],
        ["Widget Service Guide", "Install"],
        ["Widget Service Guide", "Install", "Linux"],
        ["Widget Service Guide", "Install", "Windows"],
        ["Widget Service Guide", "Configuration"],
        ["Widget Service Guide", "Setext Heading"],
    ], by_text
    linux = chunks[2].text
    assert linux.startswith("On Linux, create a virtual environment first.")
    assert "- Create the environment." in linux and ".venv/bin/pip install widgets" in linux
    # Headings live in heading_path only: never inside or as a chunk.
    headings = {b.text for b in doc.blocks if b.kind == "heading"}
    for c in chunks:
        assert c.text not in headings
        assert not any(line in headings for line in c.text.split("\n"))


def test_heading_stack_pops_to_level() -> None:
    doc = parse_text("# A\n\n## B\n\n### C\n\nc text\n\n## D\n\nd text\n\n# E\n\ne text", format="markdown")
    chunks = chunk_document(doc, count_tokens=_whitespace_counter)
    assert [(c.heading_path, c.text) for c in chunks] == [
        (["A", "B", "C"], "c text"),
        (["A", "D"], "d text"),
        (["E"], "e text"),
    ]


def test_text_before_first_heading_has_empty_path() -> None:
    doc = parse_text("intro words\n\n# Later\n\nbody", format="markdown")
    chunks = chunk_document(doc, count_tokens=_whitespace_counter)
    assert [(c.heading_path, c.text) for c in chunks] == [([], "intro words"), (["Later"], "body")]


def test_heading_only_and_empty_documents_give_no_chunks() -> None:
    assert chunk_document(parse_text("# Only\n\n## Headings", format="markdown"), count_tokens=len) == []
    assert chunk_document(parse_text("", format="text"), count_tokens=len) == []
    assert chunk_document(parse_text("<html><script>x()</script></html>", format="html"), count_tokens=len) == []
    doc = parse_text("# Empty section\n\n# Full\n\ncontent here", format="markdown")
    assert [(c.heading_path, c.text) for c in chunk_document(doc, count_tokens=len)] == [(["Full"], "content here")]


def test_small_sections_pack_paragraphs_together() -> None:
    doc = parse_text("# H\n\none two\n\nthree four\n\nfive six", format="markdown")
    chunks = chunk_document(doc, count_tokens=_whitespace_counter, max_tokens=5, overlap_tokens=0)
    assert [c.text for c in chunks] == ["one two\n\nthree four", "five six"]


def test_pages_are_carried() -> None:
    blocks = [
        Block(kind="paragraph", text="alpha beta gamma.", page=1),
        Block(kind="paragraph", text="delta epsilon.", page=2),
    ]
    doc = LoadedDocument(text="\n\n".join(b.text for b in blocks), title=None, format="pdf", blocks=blocks)
    one = chunk_document(doc, count_tokens=_whitespace_counter, max_tokens=100)
    assert [(c.page, c.text) for c in one] == [(1, "alpha beta gamma.\n\ndelta epsilon.")]
    two = chunk_document(doc, count_tokens=_whitespace_counter, max_tokens=3, overlap_tokens=0)
    assert [c.page for c in two] == [1, 2]


def test_pdf_end_to_end(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for page in range(2):
        pdf.add_page()
        pdf.multi_cell(0, 6, _abstract(100 + page, 200))
    f = tmp_path / "two.pdf"
    pdf.output(str(f))
    doc = load_file(f, max_bytes=1 << 20)
    chunks = chunk_document(doc, count_tokens=_whitespace_counter, max_tokens=64, overlap_tokens=16)
    _check_invariants(doc, chunks, _whitespace_counter, 64)
    assert {c.page for c in chunks} == {1, 2}


# --------------------------------------------------------------------------- bounds and offsets


@pytest.mark.parametrize("max_tokens,overlap", [(16, 4), (40, 10), (64, 16), (256, 32)])
def test_offsets_and_token_bound(counter: Counter, max_tokens: int, overlap: int) -> None:
    for doc in [*_fixture_docs(), _long_doc()]:
        chunks = chunk_document(doc, count_tokens=counter, max_tokens=max_tokens, overlap_tokens=overlap)
        assert chunks
        _check_invariants(doc, chunks, counter, max_tokens)
        _check_coverage(doc, chunks)


def test_sentence_without_punctuation_is_split_into_word_windows(counter: Counter) -> None:
    rng = random.Random(5)
    doc = parse_text(" ".join(rng.choice(_WORDS) for _ in range(700)), format="text")
    chunks = chunk_document(doc, count_tokens=counter, max_tokens=50, overlap_tokens=8)
    assert len(chunks) > 10
    _check_invariants(doc, chunks, counter, 50)
    _check_coverage(doc, chunks)
    # Windows overlap by trailing words.
    assert any(b.start_char < a.end_char for a, b in itertools.pairwise(chunks))


def test_giant_word_is_split_into_character_windows(bpe_counter: Counter) -> None:
    doc = parse_text("start " + "zq" * 3000 + " end.", format="text")
    chunks = chunk_document(doc, count_tokens=bpe_counter, max_tokens=64, overlap_tokens=0)
    _check_invariants(doc, chunks, bpe_counter, 64)
    _check_coverage(doc, chunks)


# --------------------------------------------------------------------------- overlap


def _overlaps(chunks: list[Chunk]) -> list[tuple[Chunk, Chunk]]:
    return [(a, b) for a, b in itertools.pairwise(chunks) if b.start_char < a.end_char]


def test_overlap_repeats_last_sentences_within_budget(counter: Counter) -> None:
    doc = parse_text("# Abstract\n\n" + _abstract(11, 600) + "\n\n# Next\n\nA new section.", format="markdown")
    chunks = chunk_document(doc, count_tokens=counter, max_tokens=60, overlap_tokens=20)
    _check_invariants(doc, chunks, counter, 60)
    pairs = _overlaps(chunks)
    assert pairs, "a split section must overlap"
    para = doc.blocks[1]
    offset = doc.text.index(para.text)
    sentence_starts = {offset + s for s, _ in split_sentences(para.text)}
    sentence_ends = {offset + e for _, e in split_sentences(para.text)}
    # The long paragraph is cut at sentence boundaries only.
    assert all(c.end_char in sentence_ends for c in chunks if c.heading_path == ["Abstract"])
    for a, b in pairs:
        repeated = doc.text[b.start_char : a.end_char]
        assert a.text.endswith(repeated) and b.text.startswith(repeated)
        assert counter(repeated) <= 20
        assert repeated != a.text, "overlap must not repeat a whole chunk"
        assert b.start_char in sentence_starts, "overlap must start at a sentence boundary"
        assert a.heading_path == b.heading_path
    # No overlap across a heading.
    last = chunks[-1]
    assert last.heading_path == ["Next"] and last.text == "A new section."
    assert last.start_char > chunks[-2].end_char


def test_overlap_zero_disables_it(counter: Counter) -> None:
    doc = parse_text(_abstract(12, 600), format="text")
    chunks = chunk_document(doc, count_tokens=counter, max_tokens=60, overlap_tokens=0)
    _check_invariants(doc, chunks, counter, 60)
    assert not _overlaps(chunks)
    _check_coverage(doc, chunks)


def test_overlap_never_crosses_sections() -> None:
    doc = _long_doc()
    chunks = chunk_document(doc, count_tokens=_whitespace_counter, max_tokens=40, overlap_tokens=12)
    for a, b in _overlaps(chunks):
        assert a.heading_path == b.heading_path


# --------------------------------------------------------------------------- determinism and validation


def test_deterministic(wordpiece_counter: Counter) -> None:
    doc = _long_doc()
    first = [c.model_dump() for c in chunk_document(doc, count_tokens=wordpiece_counter, max_tokens=48)]
    again = [c.model_dump() for c in chunk_document(_long_doc(), count_tokens=wordpiece_counter, max_tokens=48)]
    assert first == again


def test_document_with_text_but_no_blocks() -> None:
    doc = LoadedDocument(text="  hello there.  ", title=None, format="text", blocks=[])
    chunks = chunk_document(doc, count_tokens=_whitespace_counter)
    assert [(c.text, c.start_char, c.end_char) for c in chunks] == [("hello there.", 2, 14)]


def test_blocks_not_matching_text_are_rejected() -> None:
    doc = LoadedDocument(text="abc", title=None, format="text", blocks=[Block(kind="paragraph", text="xyz")])
    with pytest.raises(InvalidInput, match="do not match"):
        chunk_document(doc, count_tokens=len)


@pytest.mark.parametrize("max_tokens,overlap", [(0, 0), (10, 10), (10, -1)])
def test_bad_limits_are_rejected(max_tokens: int, overlap: int) -> None:
    with pytest.raises(InvalidInput):
        chunk_document(parse_text("x"), count_tokens=len, max_tokens=max_tokens, overlap_tokens=overlap)


def test_max_tokens_below_counter_overhead_is_rejected(wordpiece_counter: Counter) -> None:
    doc = parse_text("some words here")
    with pytest.raises(InvalidInput, match="too small"):
        chunk_document(doc, count_tokens=wordpiece_counter, max_tokens=2, overlap_tokens=0)


# --------------------------------------------------------------------------- speed


def test_chunking_hands_the_tokenizer_little_more_than_the_text(wordpiece_counter: Counter) -> None:
    """The chunker's cost is the tokenizer's: it hands count_tokens about two passes over the text (per
    sentence, then one check per chunk), never a quadratic amount. (Its speed is measured in bench/retrieval.py's
    ingest comparison, not here: timing goals live in bench/.)"""
    docs = [parse_text(_abstract(1000 + i), format="text") for i in range(20)]
    chars = [0]

    def counting(text: str) -> int:
        chars[0] += len(text)
        return wordpiece_counter(text)

    for doc in docs:
        chunks = chunk_document(doc, count_tokens=counting, max_tokens=128, overlap_tokens=32)
        assert len(chunks) >= 2  # the abstracts do need splitting at 128 tokens
    ratio = chars[0] / sum(len(d.text) for d in docs)
    assert ratio < 2.5, f"count_tokens saw {ratio:.2f}x the text"
