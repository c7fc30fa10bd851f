"""Load documents into normalised text plus a list of structural blocks.

Supported inputs: plain text (``.txt``, ``.text``, ``.rst``), Markdown
(``.md``, ``.markdown``), HTML (``.html``, ``.htm``) and PDF (``.pdf``).

Every loader returns a :class:`LoadedDocument` whose ``text`` is exactly the
blocks' texts joined by ``"\\n\\n"``. The chunker relies on that invariant to
give each chunk character offsets into ``text``.

Text is sanitised on the way in: ``\\r\\n`` and ``\\r`` become ``\\n``, form
feed / vertical tab / Unicode line and paragraph separators become ``\\n``,
other control characters (C0 except ``\\n`` and ``\\t``, DEL, C1) are
removed, and the result is Unicode NFC.

Errors are raised as :class:`core.errors.InvalidInput` with a message that
says what is wrong and what to do about it.
"""

from __future__ import annotations

import functools
import re
import textwrap
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from core.errors import InvalidInput

__all__ = [
    "SUPPORTED_SUFFIXES",
    "TEXT_SUFFIXES",
    "Block",
    "LoadedDocument",
    "load_file",
    "parse_text",
    "sanitize_text",
]

TEXT_SUFFIXES: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
}
_SUFFIX_FORMAT: dict[str, str] = {**TEXT_SUFFIXES, ".pdf": "pdf"}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_SUFFIX_FORMAT)

_FORMAT_ALIASES = {
    "text": "text",
    "txt": "text",
    "plain": "text",
    "markdown": "markdown",
    "md": "markdown",
    "html": "html",
    "htm": "html",
}

BlockKind = Literal["heading", "paragraph", "list", "code", "table"]
DocFormat = Literal["text", "markdown", "html", "pdf"]

BLOCK_SEPARATOR = "\n\n"
_BINARY_SNIFF_BYTES = 8192


class Block(BaseModel):
    """One structural unit of a document, in reading order."""

    kind: BlockKind
    text: str
    level: int = Field(default=0, ge=0, le=6, description="Heading level 1-6; 0 for non-headings.")
    page: int | None = Field(default=None, description="1-based page number (PDF only).")


class LoadedDocument(BaseModel):
    """A parsed document: full normalised text and its blocks.

    ``text == "\\n\\n".join(block.text for block in blocks)``.
    """

    text: str
    title: str | None = None
    format: DocFormat
    blocks: list[Block] = Field(default_factory=list)


# --------------------------------------------------------------------------- sanitising

_NEWLINES_RE = re.compile(r"\r\n?|[\x0b\x0c\u2028\u2029\x85]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_WS_RE = re.compile(r"\s+")


def sanitize_text(text: str) -> str:
    """Normalise newlines, drop control characters and apply Unicode NFC."""
    text = _NEWLINES_RE.sub("\n", text)
    text = _CONTROL_RE.sub("", text)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text


def _collapse(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def _clean_preformatted(text: str) -> str:
    """Keep indentation of code; drop trailing spaces and surrounding blank lines."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return textwrap.dedent("\n".join(lines))


def _build(blocks: list[Block], fmt: str, title: str | None) -> LoadedDocument:
    clean: list[Block] = []
    for block in blocks:
        text = sanitize_text(block.text)
        text = _clean_preformatted(text) if block.kind == "code" else text.strip()
        if not text.strip():
            continue
        if text != block.text:
            block = block.model_copy(update={"text": text})
        clean.append(block)
    if title is not None:
        title = _collapse(sanitize_text(title)) or None
    return LoadedDocument(
        text=BLOCK_SEPARATOR.join(b.text for b in clean),
        title=title,
        format=fmt,  # type: ignore[arg-type]
        blocks=clean,
    )


def _first_heading_title(blocks: list[Block]) -> str | None:
    headings = [b for b in blocks if b.kind == "heading"]
    for b in headings:
        if b.level == 1:
            return b.text
    return headings[0].text if headings else None


# --------------------------------------------------------------------------- plain text

_BLANK_LINES_RE = re.compile(r"\n[ \t]*\n+")


def _paragraphs(text: str, page: int | None = None) -> list[Block]:
    blocks = []
    for part in _BLANK_LINES_RE.split(text):
        lines = [line.rstrip() for line in part.split("\n")]
        para = textwrap.dedent("\n".join(lines)).strip()
        if para:
            blocks.append(Block(kind="paragraph", text=para, page=page))
    return blocks


def _parse_plain(text: str) -> LoadedDocument:
    return _build(_paragraphs(text), "text", None)


# --------------------------------------------------------------------------- markdown

_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_FRONT_TITLE_RE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.M)


def _front_matter(text: str) -> tuple[str, str | None]:
    """Strip a leading YAML front-matter block; return the rest and its ``title:`` if any."""
    m = _FRONT_MATTER_RE.match(text)
    if not m or ":" not in m.group(1):
        return text, None
    title_m = _FRONT_TITLE_RE.search(m.group(1))
    title = title_m.group(1).strip("'\"") if title_m else None
    return text[m.end() :], title or None


@functools.cache
def _markdown_parser():
    from markdown_it import MarkdownIt

    # CommonMark plus GFM tables ("gfm-like" would also need the optional linkify-it-py).
    # markdown-it's default nesting limit (20) silently drops everything nested deeper, and the
    # rest of the enclosing block with it; Python's recursion limit is the guard instead (see
    # _parse_markdown).
    return MarkdownIt("commonmark", {"maxNesting": 100_000}).enable("table")


def _md_inline(children) -> str:
    """Plain words of an ``inline`` token: markup, raw HTML and link targets are dropped."""
    parts: list[str] = []
    for tok in children or ():
        if tok.type in ("text", "text_special", "code_inline"):
            parts.append(tok.content)
        elif tok.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif tok.type == "image":  # keep the alt text
            parts.append(_md_inline(tok.children))
    return "".join(parts).strip()


class _ListItem:
    __slots__ = ("prefix", "texts")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # indentation and marker, e.g. "  1. "
        self.texts: list[str] = []  # text not yet written out as a line


def _markdown_blocks(text: str) -> list[Block]:
    """Walk markdown-it's token stream and turn it into blocks.

    A list (with its sub-lists) becomes one ``list`` block, one line per item:
    the item's marker as written, indented two spaces per nesting level, then
    the item's text. Code and tables inside a list item end the list block
    and become blocks of their own; the list resumes after them.
    """
    tokens = _markdown_parser().parse(text)
    blocks: list[Block] = []
    list_lines: list[str] = []
    items: list[_ListItem] = []  # open list items, innermost last

    def write_item(item: _ListItem) -> None:
        if item.texts:
            list_lines.append(item.prefix + " ".join(item.texts))
            item.texts.clear()
            item.prefix = " " * len(item.prefix)  # more text of the item (after a sub-list) continues it

    def flush_list() -> None:
        for item in items:
            write_item(item)
        if list_lines:
            blocks.append(Block(kind="list", text="\n".join(list_lines)))
            list_lines.clear()

    def add_text(kind: BlockKind, text: str, level: int = 0) -> None:
        if not items:
            blocks.append(Block(kind=kind, text=text, level=level))
        elif text:
            items[-1].texts.append(text)

    def add_block(block: Block) -> None:
        flush_list()
        blocks.append(block)

    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        kind = tok.type
        if kind == "inline":  # the content of a heading or paragraph
            prev = tokens[i - 1]
            if prev.type == "heading_open":
                add_text("heading", _md_inline(tok.children), int(prev.tag[1:]))
            else:
                add_text("paragraph", _md_inline(tok.children))
        elif kind in ("bullet_list_open", "ordered_list_open"):
            for item in items:  # a parent item's text comes before its sub-items
                write_item(item)
        elif kind == "list_item_open":
            # Ordered items carry their number in ``info`` and "." or ")" in ``markup``.
            items.append(_ListItem("  " * len(items) + tok.info + tok.markup + " "))
        elif kind == "list_item_close":
            write_item(items.pop())
        elif kind in ("bullet_list_close", "ordered_list_close"):
            if not items:
                flush_list()
        elif kind in ("fence", "code_block"):
            add_block(Block(kind="code", text=tok.content))
        elif kind == "table_open":
            rows: list[str] = []
            cells: list[str] = []
            while i < n and tokens[i].type != "table_close":
                cell = tokens[i]
                if cell.type == "tr_open":
                    cells = []
                elif cell.type == "inline":
                    cells.append(_md_inline(cell.children))
                elif cell.type == "tr_close":
                    while cells and not cells[-1]:  # incl. the empty cells markdown-it pads short rows with
                        cells.pop()
                    if cells:
                        rows.append(" | ".join(cells))
                i += 1
            add_block(Block(kind="table", text="\n".join(rows)))
        elif kind == "html_block":
            # Raw HTML: keep its words (comments, scripts etc. go), structured like an HTML file.
            for block in _parse_html(tok.content).blocks:
                if block.kind in ("heading", "paragraph"):
                    add_text(block.kind, block.text, block.level)
                else:
                    add_block(block)
        # Everything else (hr, blockquote and paragraph wrappers, closing tokens) carries no text.
        i += 1
    flush_list()
    return blocks


def _parse_markdown(text: str) -> LoadedDocument:
    text, front_title = _front_matter(text)
    try:
        blocks = _markdown_blocks(text)
    except RecursionError:
        # Hundreds of nested quotes / lists / brackets: keep the words, as plain-text paragraphs.
        blocks = _paragraphs(text)
    doc = _build(blocks, "markdown", front_title)
    if not doc.title:
        doc = doc.model_copy(update={"title": _first_heading_title(doc.blocks)})
    return doc


# --------------------------------------------------------------------------- html

_HTML_DROP_TAGS = [
    "script",
    "style",
    "noscript",
    "template",
    "head",
    "nav",
    "svg",
    "iframe",
    "object",
    "embed",
    "canvas",
    "button",
    "select",
    "textarea",
]
_HTML_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Elements that end the current run of inline text; their content is walked.
_HTML_CONTAINERS = frozenset(
    {
        "html",
        "body",
        "div",
        "section",
        "article",
        "main",
        "header",
        "footer",
        "aside",
        "blockquote",
        "figure",
        "figcaption",
        "details",
        "summary",
        "address",
        "form",
        "fieldset",
        "dl",
        "dt",
        "dd",
        "li",
        "center",
        "hgroup",
        "caption",
        "legend",
    }
)
_HTML_BREAKS = frozenset({"br", "hr"})


# Tags whose boundaries separate words even without whitespace in the source.
_HTML_WORD_BREAKS = (
    _HTML_CONTAINERS | _HTML_BREAKS | {"p", "td", "th", "tr", "li", "ul", "ol", "pre", "table"} | set(_HTML_HEADINGS)
)


def _inline_text(node, skip: frozenset[str] = frozenset()) -> str:
    """Text of ``node`` and its descendants, with spaces at block and ``<br>`` boundaries."""
    parts: list[str] = []
    stack = list(reversed(list(node.iter(include_text=True))))
    while stack:
        cur = stack.pop()
        tag = cur.tag
        if tag == "-text":
            parts.append(cur.text(deep=False))
        elif tag == "-comment" or tag in skip:
            continue
        else:
            if tag in _HTML_WORD_BREAKS:
                parts.append(" ")
            stack.extend(reversed(list(cur.iter(include_text=True))))
    return _collapse("".join(parts))


def _html_list_lines(node, depth: int = 0) -> list[str]:
    lines: list[str] = []
    ordered = node.tag == "ol"
    number = 1
    for child in node.iter(include_text=False):
        if child.tag != "li":
            continue
        item = _inline_text(child, skip=frozenset({"ul", "ol"}))
        if item:
            marker = f"{number}." if ordered else "-"
            lines.append(f"{'  ' * depth}{marker} {item}")
            number += 1
        for sub in child.css("ul, ol"):
            # Only direct sub-lists of this item (deeper ones are handled recursively).
            parent = sub.parent
            while parent is not None and parent.tag not in ("li",):
                parent = parent.parent
            if parent is not None and parent.mem_id == child.mem_id:
                lines.extend(_html_list_lines(sub, depth + 1))
    return lines


def _html_table_text(node) -> str:
    rows = []
    for tr in node.css("tr"):
        cells = [_inline_text(c) for c in tr.iter(include_text=False) if c.tag in ("td", "th")]
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def _parse_html(text: str) -> LoadedDocument:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(text)
    title_node = tree.css_first("head > title") or tree.css_first("title")
    title = _collapse(title_node.text(deep=True)) if title_node is not None else None
    tree.strip_tags(_HTML_DROP_TAGS)
    root = tree.body or tree.root

    blocks: list[Block] = []
    inline: list[str] = []

    def flush() -> None:
        if inline:
            para = _collapse("".join(inline))
            inline.clear()
            if para:
                blocks.append(Block(kind="paragraph", text=para))

    if root is not None:
        # Iterative walk (deeply nested markup must not hit the recursion limit).
        stack: list = [root]
        while stack:
            node = stack.pop()
            if node is None:  # marker: end of a container
                flush()
                continue
            tag = node.tag
            if tag == "-text":
                inline.append(node.text(deep=False))
            elif tag == "-comment":
                continue
            elif tag in _HTML_HEADINGS:
                flush()
                blocks.append(Block(kind="heading", level=_HTML_HEADINGS[tag], text=_inline_text(node)))
            elif tag == "p":
                flush()
                blocks.append(Block(kind="paragraph", text=_inline_text(node)))
            elif tag in ("ul", "ol"):
                flush()
                blocks.append(Block(kind="list", text="\n".join(_html_list_lines(node))))
            elif tag == "pre":
                flush()
                blocks.append(Block(kind="code", text=node.text(deep=True)))
            elif tag == "table":
                flush()
                blocks.append(Block(kind="table", text=_html_table_text(node)))
            elif tag in _HTML_BREAKS:
                inline.append(" ")
            else:
                children = list(node.iter(include_text=True))
                if tag in _HTML_CONTAINERS or node is root:
                    flush()
                    stack.append(None)
                # Inline elements (a, span, em, code, ...) just continue the current run of text.
                stack.extend(reversed(children))
        flush()

    doc = _build(blocks, "html", title)
    if not doc.title:
        doc = doc.model_copy(update={"title": _first_heading_title(doc.blocks)})
    return doc


# --------------------------------------------------------------------------- public API


def parse_text(text: str, format: str = "text") -> LoadedDocument:
    """Parse an in-memory string.

    Args:
        text: the document content.
        format: ``"text"``, ``"markdown"`` or ``"html"`` (aliases ``txt``,
            ``md``, ``htm`` are accepted).

    Returns:
        A :class:`LoadedDocument`; ``text`` is empty when the input held no
        words (the caller decides whether that is an error).

    Raises:
        InvalidInput: unknown format.
    """
    fmt = _FORMAT_ALIASES.get((format or "").strip().lower())
    if fmt is None:
        raise InvalidInput(
            f"unsupported text format {format!r}; use one of: text, markdown, html (PDFs must be loaded from a file)"
        )
    text = sanitize_text(text)
    if fmt == "markdown":
        return _parse_markdown(text)
    if fmt == "html":
        return _parse_html(text)
    return _parse_plain(text)


def _fmt_mb(size: int) -> str:
    mb = size / (1024 * 1024)
    if mb >= 1 or mb == 0:
        return f"{mb:.1f}"
    return f"{mb:.3g}"


def _decode_text(data: bytes, path: Path) -> str:
    if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
        raise InvalidInput(
            f"{path.name}: binary or non-UTF-8 file (NUL bytes found); "
            "only UTF-8 text, Markdown, HTML and PDF files can be ingested — convert it to UTF-8 text first"
        )
    try:
        return data.decode("utf-8-sig")  # plain UTF-8, with or without a BOM
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{path.name}: binary or non-UTF-8 file (invalid UTF-8 at byte {exc.start}); "
            "re-save it as UTF-8 text and retry"
        ) from None


def _load_pdf(data: bytes, path: Path) -> LoadedDocument:
    import io
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    # pypdf logs warnings about sloppy PDFs on its own logger; they are not ours to print.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidInput(f"{path.name}: encrypted (password-protected) PDF; save an unencrypted copy and retry")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = reader.metadata
        title = meta.title if meta is not None else None
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed PDFs make pypdf raise almost anything
        kind = "" if isinstance(exc, PyPdfError) else f"{type(exc).__name__}: "
        raise InvalidInput(f"{path.name}: not a readable PDF: {kind}{exc}") from None

    blocks: list[Block] = []
    for number, page_text in enumerate(pages, start=1):
        blocks.extend(_paragraphs(sanitize_text(page_text), page=number))
    doc = _build(blocks, "pdf", title if isinstance(title, str) else None)
    if not doc.text.strip():
        raise InvalidInput(
            f"{path.name}: the PDF has no extractable text ({len(pages)} page(s)); it may be a scanned "
            "image PDF — run OCR on it first (e.g. ocrmypdf) and ingest the result"
        )
    return doc


def load_file(path: Path, *, max_bytes: int) -> LoadedDocument:
    """Read and parse one file.

    Args:
        path: the file to load; its suffix picks the parser.
        max_bytes: size limit (``GUARDRAG_MAX_FILE_MB`` in the settings).

    Returns:
        A :class:`LoadedDocument` (PDF blocks carry 1-based page numbers).

    Raises:
        InvalidInput: missing path, not a regular file, too large,
            unsupported suffix, binary / non-UTF-8 text, encrypted or
            unreadable PDF, PDF without extractable text.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInput(
            f"{path}: no such file; check the path (relative paths are resolved against the server's working directory)"
        )
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise InvalidInput(f"{path}: is {kind}; pass the path of a single file")

    suffix = path.suffix.lower()
    fmt = _SUFFIX_FORMAT.get(suffix)
    if fmt is None:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise InvalidInput(f"{path.name}: unsupported file type {suffix or '(no suffix)'!r}; supported: {supported}")

    def too_big(size: int) -> InvalidInput:
        return InvalidInput(
            f"{path.name}: file is {_fmt_mb(size)} MB ({size} bytes), over the {_fmt_mb(max_bytes)} MB limit "
            f"({max_bytes} bytes); raise GUARDRAG_MAX_FILE_MB or split the file"
        )

    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise too_big(size)
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew between stat() and read()
        raise too_big(len(data))

    if fmt == "pdf":
        return _load_pdf(data, path)
    return parse_text(_decode_text(data, path), fmt)
