"""Tests for servers.retrieval.loaders: parsing, sanitising and input checks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from core.errors import GuardragError, InvalidInput
from servers.retrieval.loaders import (
    SUPPORTED_SUFFIXES,
    Block,
    LoadedDocument,
    load_file,
    parse_text,
    sanitize_text,
)

DOCS = Path(__file__).resolve().parents[2] / "data" / "docs"
MB = 1024 * 1024


def _kinds(doc: LoadedDocument) -> list[str]:
    return [b.kind for b in doc.blocks]


def _assert_text_is_joined_blocks(doc: LoadedDocument) -> None:
    assert doc.text == "\n\n".join(b.text for b in doc.blocks)
    for b in doc.blocks:
        assert b.text and b.text == b.text.rstrip() and b.text.strip()


# --------------------------------------------------------------------------- markdown


@pytest.fixture(scope="module")
def guide() -> LoadedDocument:
    return load_file(DOCS / "guide.md", max_bytes=MB)


def test_markdown_headings_and_title(guide: LoadedDocument) -> None:
    assert guide.format == "markdown"
    assert guide.title == "Widget Service Guide"
    headings = [(b.level, b.text) for b in guide.blocks if b.kind == "heading"]
    assert headings == [
        (1, "Widget Service Guide"),
        (2, "Install"),
        (3, "Linux"),
        (3, "Windows"),
        (2, "Configuration"),
        (2, "Setext Heading"),
    ]
    _assert_text_is_joined_blocks(guide)


def test_markdown_fenced_code_kept_whole(guide: LoadedDocument) -> None:
    code = [b for b in guide.blocks if b.kind == "code"]
    assert len(code) == 1
    assert code[0].text == (
        "python -m venv .venv\n\n# comment inside the fence: not a heading\n.venv/bin/pip install widgets"
    )
    assert "```" not in guide.text


def test_markdown_lists_grouped(guide: LoadedDocument) -> None:
    lists = [b.text for b in guide.blocks if b.kind == "list"]
    assert lists == [
        "- Create the environment.\n- Install the package. This step may take a minute.\n- Start widgetd.",
        "1. First step.\n2. Second step.",
    ]


def test_markdown_table_rows(guide: LoadedDocument) -> None:
    tables = [b.text for b in guide.blocks if b.kind == "table"]
    assert tables == [
        "Setting | Default | Meaning\nport | 8080 | TCP port to listen on\nworkers | 4 | number of worker processes"
    ]


def test_markdown_inline_markup_stripped(guide: LoadedDocument) -> None:
    assert "start the service with the widgetd command." in guide.text
    assert "Windows users should use the official installer." in guide.text
    assert "**" not in guide.text and "example.invalid" not in guide.text


def test_markdown_paragraph_lines_are_joined(guide: LoadedDocument) -> None:
    paras = [b.text for b in guide.blocks if b.kind == "paragraph"]
    assert paras[0] == (
        "The widget service stores widgets and answers questions about them. It runs on a single machine by default."
    )


def test_markdown_edge_cases() -> None:
    doc = parse_text(
        "## Intro ##\n\n#hashtag is not a heading\n\n# Real Title\n\ntext\n\n---\n\n> quoted\n> more\n\n"
        "```python\nunclosed = True\n",
        format="md",
    )
    assert [(b.kind, b.level, b.text) for b in doc.blocks] == [
        ("heading", 2, "Intro"),
        ("paragraph", 0, "#hashtag is not a heading"),
        ("heading", 1, "Real Title"),
        ("paragraph", 0, "text"),
        ("paragraph", 0, "quoted more"),
        ("code", 0, "unclosed = True"),
    ]
    assert doc.title == "Real Title"  # the first H1 wins over an earlier H2


def test_markdown_front_matter_is_dropped_and_gives_the_title() -> None:
    doc = parse_text('---\ntitle: "Front Title"\ntags: [a, b]\n---\n\n## Section\n\nBody text.', format="md")
    assert doc.title == "Front Title"
    assert doc.text == "Section\n\nBody text."
    # A thematic break at the top is not front matter.
    assert parse_text("---\n\nJust text.", format="md").text == "Just text."


def test_markdown_title_falls_back_to_first_heading_then_none() -> None:
    assert parse_text("### Small\n\nbody", format="markdown").title == "Small"
    assert parse_text("just a paragraph", format="markdown").title is None


def _md_blocks(source: str) -> list[tuple[str, int, str]]:
    doc = parse_text(source, format="md")
    _assert_text_is_joined_blocks(doc)
    return [(b.kind, b.level, b.text) for b in doc.blocks]


def test_markdown_nested_lists_are_one_block_indented_by_depth() -> None:
    src = "- a\n  - b\n    1. c\n    2) d\n- e\n\n  more about e\n\nafter"
    assert _md_blocks(src) == [
        ("list", 0, "- a\n  - b\n    1. c\n    2) d\n- e more about e"),
        ("paragraph", 0, "after"),
    ]


def test_markdown_heading_with_inline_code_links_and_images() -> None:
    doc = parse_text("Intro.\n\n## Use `run()` with [the API](https://x.invalid/api) ![logo](l.png) ##\n", format="md")
    assert [(b.kind, b.level, b.text) for b in doc.blocks] == [
        ("paragraph", 0, "Intro."),
        ("heading", 2, "Use run() with the API logo"),
    ]
    assert doc.title == "Use run() with the API logo"
    assert "x.invalid" not in doc.text and "l.png" not in doc.text


def test_markdown_fences_keep_hash_lines_and_inner_fences_verbatim() -> None:
    src = "````markdown\n# not a heading\n```\ninner fence\n```\n````\n\n~~~\n## also not\n   indented\n~~~\n"
    doc = parse_text(src, format="md")
    assert [(b.kind, b.text) for b in doc.blocks] == [
        ("code", "# not a heading\n```\ninner fence\n```"),
        ("code", "## also not\n   indented"),
    ]
    assert doc.title is None


def test_markdown_setext_headings_span_lines_and_strip_markup() -> None:
    doc = parse_text("Big\nTitle\n===\n\nSmall *one*\n---\n\nbody\n", format="md")
    assert [(b.kind, b.level, b.text) for b in doc.blocks] == [
        ("heading", 1, "Big Title"),
        ("heading", 2, "Small one"),
        ("paragraph", 0, "body"),
    ]
    assert doc.title == "Big Title"


def test_markdown_table_cells_are_plain_text() -> None:
    src = (
        "| Name | `code` | Link |\n|:-----|:---:|---:|\n"
        "| **bold** | `a \\| b` | [site](https://x.invalid) |\n| only one |\n|  |  |  |\n"
    )
    assert _md_blocks(src) == [("table", 0, "Name | code | Link\nbold | a | b | site\nonly one")]


def test_markdown_inline_html_entities_escapes_and_references() -> None:
    src = "a <b>bold</b> &amp; \\*not em\\* [ref][r] and [dangling][nope]\n\n[r]: https://x.invalid\n"
    assert _md_blocks(src) == [("paragraph", 0, "a bold & *not em* ref and [dangling][nope]")]


def test_markdown_html_blocks_keep_words_and_drop_comments() -> None:
    src = (
        "<!--\nhidden: comment\n-->\n"
        '<h1 align="center">Project</h1>\n<p align="center"><strong>Tagline</strong> here</p>\n\n'
        "```html\n<!-- kept in code -->\n```\n"
    )
    doc = parse_text(src, format="md")
    assert [(b.kind, b.level, b.text) for b in doc.blocks] == [
        ("heading", 1, "Project"),
        ("paragraph", 0, "Tagline here"),
        ("code", 0, "<!-- kept in code -->"),
    ]
    assert doc.title == "Project" and "hidden" not in doc.text


def test_markdown_code_inside_a_list_item_is_its_own_block() -> None:
    src = "1. Install:\n\n   ```sh\n   pip install x\n   ```\n2. Run it.\n"
    assert _md_blocks(src) == [
        ("list", 0, "1. Install:"),
        ("code", 0, "pip install x"),
        ("list", 0, "2. Run it."),
    ]


def test_markdown_quotes_follow_commonmark() -> None:
    # Lazy continuation lines stay in the quote's paragraph; a quote can hold any block.
    assert _md_blocks("> a\nb\n\n> - x\n> - y\n") == [("paragraph", 0, "a b"), ("list", 0, "- x\n- y")]


@pytest.mark.parametrize("depth", [30, 5000])
def test_markdown_deep_nesting_loses_no_text(depth: int) -> None:
    for src in (
        ">" * depth + " deep\n\nafter",
        "".join("  " * k + f"- l{k}\n" for k in range(min(depth, 400))) + "\nafter",
        "[" * depth + "deep" + "](u)" * depth + "\n\nafter",
    ):
        doc = parse_text(src, format="md")
        assert "deep" in doc.text or f"l{min(depth, 400) - 1}" in doc.text
        assert doc.text.endswith("after")
        _assert_text_is_joined_blocks(doc)


# --------------------------------------------------------------------------- html


@pytest.fixture(scope="module")
def page() -> LoadedDocument:
    return load_file(DOCS / "page.html", max_bytes=MB)


def test_html_drops_boilerplate(page: LoadedDocument) -> None:
    for unwanted in (
        "trackingCode",
        "should never appear",
        "injected script text",
        "enable JavaScript",
        "color: red",
        "About us",
        "template content",
        "Gadget Handbook",  # the <title> is the title, not body text
    ):
        assert unwanted not in page.text


def test_html_structure(page: LoadedDocument) -> None:
    assert page.format == "html"
    assert page.title == "Gadget Handbook"
    assert [(b.kind, b.text) for b in page.blocks] == [
        ("heading", "Gadgets"),
        ("paragraph", "Gadgets are small devices. They fit in a pocket."),
        ("paragraph", "Loose text inside a div with emphasis."),
        ("paragraph", "A paragraph inside the div."),
        ("paragraph", "Trailing div text."),
        ("heading", "Care & Maintenance"),
        ("list", "- Keep gadgets dry.\n- Charge them weekly.\n  1. Plug in.\n  2. Wait."),
        ("code", "gadget --reset\n  --force"),
        ("table", "Model | Weight\nG1 | 120 g"),
        ("paragraph", "Quoted wisdom about gadgets."),
    ]
    assert [b.level for b in page.blocks if b.kind == "heading"] == [1, 2]
    _assert_text_is_joined_blocks(page)


def test_html_title_falls_back_to_h1_and_whitespace_collapses() -> None:
    doc = parse_text("<body><h2>Minor</h2><h1>  Main\n   Title </h1><p>a\n\n   b\tc</p></body>", format="html")
    assert doc.title == "Main Title"
    assert doc.blocks[-1].text == "a b c"


def test_html_control_characters_from_entities_are_removed() -> None:
    doc = parse_text("<p>bell&#7;here &amp; there</p>", format="html")
    assert doc.text == "bellhere & there"


# --------------------------------------------------------------------------- plain text


def test_plain_text_paragraphs_and_sanitising() -> None:
    doc = load_file(DOCS / "notes.txt", max_bytes=MB)
    assert doc.format == "text" and doc.title is None
    assert [b.text for b in doc.blocks] == [
        "Plain text notes.\nSecond line of the first paragraph.",
        "Second paragraph with a control char and caf\u00e9.",  # NFC: e + combining accent -> é
        "Third paragraph.",
    ]
    assert "\r" not in doc.text and "\x07" not in doc.text
    _assert_text_is_joined_blocks(doc)


def test_sanitize_text() -> None:
    assert sanitize_text("a\x00b\x1bc\td\r\ne\rf\x7f") == "abc\td\ne\nf"
    assert sanitize_text("cafe\u0301") == "caf\u00e9"
    assert sanitize_text("page\x0cbreak") == "page\nbreak"


def test_rst_and_text_suffixes_load_as_text(tmp_path: Path) -> None:
    assert {".txt", ".text", ".rst", ".md", ".markdown", ".html", ".htm", ".pdf"} <= SUPPORTED_SUFFIXES
    for suffix in (".rst", ".text", ".TXT"):
        f = tmp_path / f"doc{suffix}"
        f.write_text("Title\n=====\n\nBody.", encoding="utf-8")
        assert load_file(f, max_bytes=MB).format == "text"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "bom.md"
    f.write_bytes("\ufeff# Hello\n\nWorld".encode())
    doc = load_file(f, max_bytes=MB)
    assert doc.title == "Hello" and doc.text == "Hello\n\nWorld"


def test_empty_file_gives_empty_document(tmp_path: Path) -> None:
    f = tmp_path / "empty.txt"
    f.write_text("  \n\n \t\n", encoding="utf-8")
    doc = load_file(f, max_bytes=MB)
    assert doc.text == "" and doc.blocks == []


def test_parse_text_rejects_unknown_format() -> None:
    with pytest.raises(InvalidInput, match="unsupported text format"):
        parse_text("x", format="docx")
    with pytest.raises(InvalidInput):
        parse_text("x", format="pdf")


# --------------------------------------------------------------------------- pdf


def _two_page_pdf(path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Fruit Report")
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "Apples grow on trees. Apples are often red.")
    pdf.add_page()
    pdf.multi_cell(0, 8, "Pears ripen after picking.")
    pdf.output(str(path))
    return path


def test_pdf_pages(tmp_path: Path) -> None:
    doc = load_file(_two_page_pdf(tmp_path / "fruit.pdf"), max_bytes=MB)
    assert doc.format == "pdf"
    assert doc.title == "Fruit Report"
    assert [(b.page, b.text) for b in doc.blocks] == [
        (1, "Apples grow on trees. Apples are often red."),
        (2, "Pears ripen after picking."),
    ]
    _assert_text_is_joined_blocks(doc)


def test_pdf_encrypted_is_rejected(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="user")
    pdf.add_page()
    pdf.set_font("Helvetica")
    pdf.cell(text="secret")
    f = tmp_path / "locked.pdf"
    pdf.output(str(f))
    with pytest.raises(InvalidInput, match="encrypted"):
        load_file(f, max_bytes=MB)


def test_pdf_without_text_is_rejected(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(10, 10, 50, 50)
    f = tmp_path / "scan.pdf"
    pdf.output(str(f))
    with pytest.raises(InvalidInput, match=r"no extractable text.*scanned image PDF"):
        load_file(f, max_bytes=MB)


def test_broken_pdf_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "broken.pdf"
    f.write_bytes(b"%PDF-1.4\n" + random.Random(1).randbytes(300))
    with pytest.raises(InvalidInput, match="not a readable PDF"):
        load_file(f, max_bytes=MB)


# --------------------------------------------------------------------------- bad inputs


def test_binary_file_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "blob.txt"
    f.write_bytes(random.Random(7).randbytes(2000) + b"\x00\x00")
    with pytest.raises(InvalidInput, match="binary or non-UTF-8 file"):
        load_file(f, max_bytes=MB)


def test_non_utf8_text_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "latin1.md"
    f.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    with pytest.raises(InvalidInput, match="binary or non-UTF-8 file"):
        load_file(f, max_bytes=MB)


def test_too_big_file_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "big.txt"
    f.write_text("word " * 400, encoding="utf-8")  # 2000 bytes
    with pytest.raises(InvalidInput) as info:
        load_file(f, max_bytes=1000)
    msg = info.value.message
    assert "GUARDRAG_MAX_FILE_MB" in msg
    assert "2000 bytes" in msg and "1000 bytes" in msg and "MB" in msg
    # Exactly at the limit is fine.
    assert load_file(f, max_bytes=2000).text.startswith("word word")


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        load_file(tmp_path / "nope.md", max_bytes=MB)


def test_directory_is_rejected(tmp_path: Path) -> None:
    d = tmp_path / "folder.md"
    d.mkdir()
    with pytest.raises(InvalidInput, match="is a directory"):
        load_file(d, max_bytes=MB)


def test_unsupported_suffix_lists_supported(tmp_path: Path) -> None:
    f = tmp_path / "report.docx"
    f.write_bytes(b"PK\x03\x04")
    with pytest.raises(InvalidInput) as info:
        load_file(f, max_bytes=MB)
    msg = info.value.message
    assert "'.docx'" in msg
    for suffix in (".md", ".html", ".pdf", ".txt"):
        assert suffix in msg


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_file_is_rejected(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="not a regular file"):
        load_file(fifo, max_bytes=MB)


def test_errors_are_guardrag_errors(tmp_path: Path) -> None:
    with pytest.raises(GuardragError) as info:
        load_file(tmp_path / "nope.txt", max_bytes=MB)
    assert info.value.code == "invalid_input"


def test_block_model_validates_level() -> None:
    with pytest.raises(ValueError):
        Block(kind="heading", text="x", level=7)
