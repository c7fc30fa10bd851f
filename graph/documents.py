"""From caller items to document records: validation, chunking, extraction, guard scans.

:func:`prepare` validates a :class:`graph.schemas.GraphItem` and splits it into chunks (the
caller's own chunks, or paragraphs packed up to ``chunk_chars``); :func:`build_records` runs the
extraction over a batch and scans every chunk once with the injection scanner
(:func:`guards.policy.scan_retrieved`), so reads only apply the stored verdict.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import InvalidInput
from core.validation import check_metadata, check_text
from graph.extract import extract_documents
from graph.schemas import GraphItem
from graph.state import ChunkRecord, DocRecord

__all__ = ["Prepared", "build_records", "check_doc_id", "chunk_text", "prepare"]

_PARA = re.compile(r"\n\s*\n")
_SENT_END = re.compile(r"(?<=[.!?])\s+")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def check_doc_id(doc_id: str) -> str:
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 512 or any(ord(c) < 32 for c in doc_id):
        raise InvalidInput(f"doc_id {str(doc_id)[:80]!r} is invalid: use 1-512 printable characters.")
    return doc_id


def _pieces(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Split text[start:end] at sentence ends into pieces of at most max_chars (a longer sentence is cut)."""
    out, s = [], start
    while end - s > max_chars:
        window = text[s : s + max_chars]
        cut = max((m.end() for m in _SENT_END.finditer(window)), default=0)
        if cut <= 0:
            cut = window.rfind(" ") + 1 or max_chars
        out.append((s, s + cut))
        s += cut
    out.append((s, end))
    return out


def chunk_text(text: str, max_chars: int) -> list[tuple[int, int]]:
    """Character spans of the chunks of ``text``: paragraphs (blank-line separated) packed greedily up
    to ``max_chars``; a longer paragraph is split at sentence ends. Spans are stripped. O(len(text))."""
    paras, pos = [], 0
    for m in [*_PARA.finditer(text), None]:
        end = m.start() if m else len(text)
        seg = text[pos:end]
        lead = len(seg) - len(seg.lstrip())
        s, e = pos + lead, pos + len(seg.rstrip())
        if s < e:
            paras.extend(_pieces(text, s, e, max_chars))
        pos = m.end() if m else len(text)
    chunks: list[tuple[int, int]] = []
    for s, e in paras:
        if chunks and e - chunks[-1][0] <= max_chars:
            chunks[-1] = (chunks[-1][0], e)
        else:
            chunks.append((s, e))
    return chunks


@dataclass
class Prepared:
    doc_id: str
    doc_hash: str
    title: str | None
    source: str
    metadata: dict
    chunks: list[tuple[str, str]]  # (chunk_id, text)


def prepare(item: GraphItem, max_chars: int, label: str = "document") -> Prepared:
    """Validate one item and chunk it. Raises InvalidInput naming ``label`` on bad input."""
    meta = check_metadata(item.metadata)
    title = item.title.strip() if item.title and item.title.strip() else None
    if title and "\x00" in title:
        raise InvalidInput(f"{label}: title contains NUL bytes.")
    if item.chunks is not None:
        if not item.chunks:
            raise InvalidInput(f"{label}: chunks is an empty list; give chunks or text.")
        ids = [c.chunk_id for c in item.chunks]
        if len(set(ids)) != len(ids):
            raise InvalidInput(f"{label}: chunk ids repeat; each chunk needs its own id.")
        for c in item.chunks:
            check_doc_id(c.chunk_id)
            check_text(c.text, f"{label} chunk {c.chunk_id!r}")
        body = "\x00".join(f"{c.chunk_id}\x01{c.text}" for c in item.chunks)
    else:
        check_text(item.text, f"{label} text")
        body = item.text
    doc_hash = _sha256(body + "\x00" + json.dumps(meta, sort_keys=True) + "\x00" + (title or ""))
    if item.doc_id is None:
        doc_id = f"text-{_sha256(body)[:16]}"
    else:
        doc_id = check_doc_id(item.doc_id)
    if item.chunks is not None:
        chunks = [(c.chunk_id, c.text) for c in item.chunks]
    else:
        chunks = [(f"{doc_id}#{doc_hash[:12]}-{n}", item.text[s:e])
                  for n, (s, e) in enumerate(chunk_text(item.text, max_chars))]
    return Prepared(doc_id=doc_id, doc_hash=doc_hash, title=title, source=item.source or doc_id, metadata=meta,
                    chunks=chunks)


def build_records(nlp, prepared: Sequence[Prepared], *, batch_size: int = 64, scan: bool = True
                  ) -> list[tuple[DocRecord, list[ChunkRecord]]]:
    """Extract and (when ``scan``) guard-scan a batch of prepared documents. O(total tokens)."""
    from guards import policy as guard_policy

    extractions = extract_documents(nlp, [(p.title, p.chunks) for p in prepared], batch_size=batch_size)
    out = []
    for p, ex in zip(prepared, extractions, strict=True):
        chunks = []
        for n, (chunk_id, text) in enumerate(p.chunks):
            content_hash = _sha256(text)
            scanned = guard_policy.scan_retrieved(text, content_hash).model_dump() if scan else None
            chunks.append(ChunkRecord(chunk_id=chunk_id, doc_id=p.doc_id, position=n, text=text,
                                      content_hash=content_hash, scan=scanned))
        rec = DocRecord(doc_id=p.doc_id, doc_hash=p.doc_hash, title=p.title, source=p.source, metadata=p.metadata,
                        chunk_ids=[c for c, _ in p.chunks], extraction=ex)
        out.append((rec, chunks))
    return out
