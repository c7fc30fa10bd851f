"""Typed inputs and outputs of the graph library (and of the graph server built on it).

Every list a caller can receive is capped: a page with ``next_cursor`` (null at the end) and ``total``,
or a fixed cap with ``capped`` saying that more existed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.schemas import GuardVerdict

Scalar = str | int | float | bool


# ------------------------------------------------------------------------------------------ inputs
class ChunkInput(BaseModel):
    """A chunk given ready-made (e.g. pulled from the retrieval store): its id is kept."""

    chunk_id: str = Field(description="Stable chunk id, e.g. the retrieval store's.")
    text: str


class GraphItem(BaseModel):
    """One document to put in the graph."""

    text: str = Field("", description="The document text; ignored when `chunks` is given.")
    doc_id: str | None = Field(None, description="Stable id; re-ingesting the same id replaces the document.")
    title: str | None = Field(None, description="The title names the document's subject; it becomes an entity.")
    source: str | None = None
    metadata: dict[str, Scalar] = Field(default_factory=dict)
    chunks: list[ChunkInput] | None = Field(None, description="Pre-chunked text; otherwise paragraphs are packed.")


# ------------------------------------------------------------------------------------------ provenance
class Evidence(BaseModel):
    """A sentence that supports an entity or a relation, with its guard verdict."""

    doc_id: str
    chunk_id: str
    start: int = Field(description="Sentence start (characters) in the chunk text, or in the title.")
    end: int = Field(description="Sentence end (characters).")
    in_title: bool = Field(False, description="The support is the document title, not its text.")
    text: str | None = Field(None, description="The sentence after the guard policy; null when blocked.")
    guard: GuardVerdict = Field(default_factory=GuardVerdict)


# ------------------------------------------------------------------------------------------ entities
class EntityInfo(BaseModel):
    """An entity (a graph node)."""

    id: str = Field(description="Canonical key: case-folded, lemmatised, aliases merged.")
    name: str = Field(description="The most frequent surface form.")
    label: str = Field(description="spaCy NER label, 'NOUN' for a noun phrase, 'TITLE' for a document title.")
    aliases: list[str] = Field(default_factory=list, description="Other surface forms (at most 10).")
    mentions: int
    documents: int
    chunks: int
    degree: int = Field(description="Number of distinct neighbouring entities.")


class EntityHit(EntityInfo):
    score: float
    matched_by: list[Literal["name", "embedding", "expansion"]] = Field(default_factory=list)


class EntitySearchResult(BaseModel):
    collection: str
    query: str
    hits: list[EntityHit]
    total: int = Field(description="Candidates found before paging (at most the search cap).")
    next_cursor: str | None = None


class Relation(BaseModel):
    """A relation between two entities, with a few evidence sentences."""

    source: str
    source_name: str
    target: str
    target_name: str
    relation: str = Field(description="Verb lemma (plus preposition) from the parse, or 'co-occurs'.")
    kind: Literal["relation", "cooccurrence"]
    weight: int = Field(description="How many sentences support it.")
    evidence: list[Evidence] = Field(default_factory=list)
    evidence_total: int = 0


class EntityDetail(BaseModel):
    collection: str
    entity: EntityInfo
    description: str = Field(description="Offline description: name, label, aliases and strongest relations.")
    relations: list[Relation] = Field(description="A page of relations, strongest first.")
    relations_total: int
    next_cursor: str | None = None
    sources: list[Evidence] = Field(description="First supporting sentences (capped).")
    sources_total: int
    sources_capped: bool


class Neighbor(BaseModel):
    entity: EntityInfo
    hop: int
    via: Relation = Field(description="The strongest edge from the entity it was reached from.")


class NeighborsResult(BaseModel):
    collection: str
    entity: EntityInfo
    hops: int
    neighbors: list[Neighbor]
    total: int
    next_cursor: str | None = None
    capped: bool = Field(False, description="The expansion stopped at its node cap; raise no limit, lower hops.")


class GraphPath(BaseModel):
    entities: list[EntityInfo]
    steps: list[Relation] = Field(description="One edge per step with its best evidence sentence.")
    length: int


class PathResult(BaseModel):
    collection: str
    source: EntityInfo
    target: EntityInfo
    paths: list[GraphPath]
    capped: bool = Field(False, description="More paths exist within max_length than were returned.")


# ------------------------------------------------------------------------------------------ communities
class CommunityInfo(BaseModel):
    id: str = Field(description="'L{level}-C{n}'")
    level: int = Field(description="0 is the coarsest level.")
    size: int
    parent: str | None = None
    top_entities: list[EntityInfo]
    top_relations: list[str] = Field(description="'a -verb-> b' strings, strongest first.")
    sentences: list[Evidence] = Field(description="Most representative sentences.")
    summary: str = Field(description="Offline extractive summary of the above.")


class CommunitiesResult(BaseModel):
    collection: str
    level: int
    levels: int
    communities: list[CommunityInfo]
    total: int
    next_cursor: str | None = None


# ------------------------------------------------------------------------------------------ search
class ChunkHit(BaseModel):
    chunk_id: str
    doc_id: str
    title: str | None = None
    text: str | None = Field(description="Chunk text after the guard policy; null when blocked.")
    guard: GuardVerdict
    score: float
    entities: list[str] = Field(default_factory=list, description="Ids of the matched entities it supports.")


class LocalSearchResult(BaseModel):
    collection: str
    query: str
    entities: list[EntityHit] = Field(description="Matched and expanded entities, best first (capped).")
    relations: list[Relation] = Field(description="Strongest relations among them (capped).")
    chunks: list[ChunkHit]
    total: int = Field(description="Chunks found before paging.")
    next_cursor: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)


class CommunityHit(BaseModel):
    id: str
    level: int
    size: int
    score: float
    summary: str


class RankedSentence(Evidence):
    score: float
    community: str


class GlobalSearchResult(BaseModel):
    collection: str
    query: str
    level: int
    communities: list[CommunityHit] = Field(description="Best community summaries (map step), capped.")
    sentences: list[RankedSentence] = Field(description="Reduced extractive answer material, capped.")
    capped: bool


class PprResult(BaseModel):
    collection: str
    query: str
    seeds: list[EntityHit] = Field(description="Question entities the walk restarts from (capped).")
    chunks: list[ChunkHit]
    total: int
    next_cursor: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)


# ------------------------------------------------------------------------------------------ writes, stats
class DocumentOutcome(BaseModel):
    doc_id: str
    status: Literal["added", "replaced", "unchanged"]
    chunks: int
    mentions: int
    relations: int


class IngestResult(BaseModel):
    collection: str
    documents: list[DocumentOutcome]
    added: int
    replaced: int
    unchanged: int
    entities: int = Field(description="Entities in the graph after the write.")
    edges: int
    seconds: float
    extraction_seconds: float


class DeleteResult(BaseModel):
    collection: str
    doc_id: str
    chunks_deleted: int
    entities_removed: int
    edges_removed: int


class GraphStats(BaseModel):
    collection: str
    documents: int
    chunks: int
    entities: int
    edges: int
    relations: int = Field(description="Edges from the dependency parse.")
    cooccurrences: int
    aliases: int
    entity_index: int = Field(description="Entities in the Chroma lookup collection.")
    communities_ready: bool
    store: str
    generation: str | None
    repairs: list[str] = Field(default_factory=list)
