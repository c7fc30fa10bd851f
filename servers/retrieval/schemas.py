"""Typed inputs and outputs of the retrieval server (also used by its engine)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.schemas import GuardVerdict

Scalar = str | int | float | bool


class LegHit(BaseModel):
    """Where a hit stood in one search leg."""

    rank: int = Field(description="1-based rank in this leg.")
    score: float = Field(description="Leg score: cosine similarity for vector, BM25 score for bm25.")


class Provenance(BaseModel):
    """Where a chunk came from."""

    doc_id: str
    source: str = Field(description="File path relative to its root, or the caller's source label.")
    title: str | None = None
    heading_path: list[str] = Field(default_factory=list)
    position: int = Field(description="0-based index of the chunk in its document.")
    start_char: int
    end_char: int
    page: int | None = None
    content_hash: str = Field(description="sha256 of the chunk text.")
    doc_hash: str = Field(description="sha256 of the whole document text.")
    ingested_at: str


class Chunk(BaseModel):
    """A chunk with its provenance and the caller's metadata."""

    chunk_id: str
    collection: str
    text: str | None = Field(description="The chunk text; under the 'quarantine' policy with instruction spans "
                             "neutralised; null when the guard blocked it.")
    provenance: Provenance
    metadata: dict[str, Scalar] = Field(default_factory=dict, description="The metadata given at ingest.")
    guard: GuardVerdict = Field(default_factory=GuardVerdict, description="The guard verdict on this text.")


class SearchHit(Chunk):
    """A search result: a chunk plus how each leg ranked it."""

    score: float = Field(description="Fused score (weighted reciprocal rank fusion).")
    vector: LegHit | None = Field(None, description="Rank and score in the vector leg; null when absent there.")
    bm25: LegHit | None = Field(None, description="Rank and score in the BM25 leg; null when absent there.")


class BlockedHit(BaseModel):
    """A hit the guard policy withheld ('block'): where it came from and why, never its text."""

    chunk_id: str
    provenance: Provenance
    guard: GuardVerdict


class SearchResult(BaseModel):
    collection: str
    query: str
    mode: Literal["hybrid", "vector", "bm25"]
    hits: list[SearchHit]
    blocked: list[BlockedHit] = Field(default_factory=list, description="Hits of this page withheld by the guard.")
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next page; null at the end.")
    total_candidates: int = Field(description="How many distinct hits the legs produced before paging.")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class DocumentInfo(BaseModel):
    doc_id: str
    collection: str
    source: str
    title: str | None = None
    doc_hash: str
    chunks: int
    format: str
    ingested_at: str
    metadata: dict[str, Scalar] = Field(default_factory=dict)


class Document(DocumentInfo):
    """A whole document, rebuilt from its chunks in order."""

    chunk_ids: list[str]
    text: str = Field(description="The chunk texts joined in order (overlaps between chunks are not removed), "
                      "after the guard policy.")
    guard: GuardVerdict = Field(default_factory=GuardVerdict,
                                description="The most severe verdict of its chunks; details name the chunks concerned.")


class DocumentOutcome(BaseModel):
    doc_id: str
    source: str
    status: Literal["added", "replaced", "unchanged", "skipped", "failed"]
    chunks: int = 0
    reason: str | None = Field(None, description="Why a document was skipped or failed.")


class IngestResult(BaseModel):
    collection: str
    documents: list[DocumentOutcome]
    added: int
    replaced: int
    unchanged: int
    failed: int
    chunks_written: int
    chunks_deleted: int
    seconds: float


class DeleteResult(BaseModel):
    collection: str
    doc_id: str
    chunks_deleted: int


class DocumentPage(BaseModel):
    collection: str
    documents: list[DocumentInfo]
    next_cursor: str | None = None
    total: int


class CollectionInfo(BaseModel):
    name: str
    chunks: int
    documents: int | None = None
    generation: str | None = Field(None, description="Changes with every committed write (ingest, delete) to the "
                                   "collection: a cache keyed on it is invalidated by any change.")


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class Stats(BaseModel):
    collection: str | None
    chunks: int
    documents: int
    bm25_chunks: int
    in_sync: bool = Field(description="True when BM25 and Chroma hold the same chunk ids.")
    chroma: str = Field(description="'embedded:<path>' or the Chroma server URL.")
    embedder: dict[str, Any]
    settings: dict[str, Any]
    repairs: list[str] = Field(default_factory=list, description="Repairs made at start-up (crash recovery).")
