"""Outputs of the graph server that the graph library does not define (the rest are :mod:`graph.schemas`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from graph.schemas import IngestResult


class PullInfo(BaseModel):
    """What ``graph_ingest`` read from the retrieval server's store."""

    retrieval_collection: str = Field(description="The retrieval collection the documents were read from.")
    documents: int = Field(description="Documents read in this call.")
    chunks: int = Field(description="Chunks read in this call (their retrieval chunk ids are kept).")
    total: int = Field(description="Documents available to pull (all of the collection, or the doc_ids found).")
    missing: list[str] = Field(default_factory=list, description="Requested doc_ids the retrieval store does not hold.")
    next_cursor: str | None = Field(None, description="Pass as cursor to pull the next documents; null at the end.")
    capped: bool = Field(description="More documents remain to pull than this call took (see next_cursor).")


class GraphIngestResult(IngestResult):
    """The ingest outcome; ``pulled`` says what came from the retrieval store, when it was the source."""

    pulled: PullInfo | None = None
