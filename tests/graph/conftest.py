"""Fixtures of the graph tests: the spaCy pipeline, our hand-written documents, an engine on a temp dir."""

from __future__ import annotations

import json

import pytest

from core.settings import GraphSettings, Settings
from graph.schemas import GraphItem
from tests.conftest import DATA

DOCS = json.loads((DATA / "graph" / "docs.json").read_text())


def items(version: str = "text") -> list[GraphItem]:
    """Every hand-written document as an item (``version="v2"``: the second version where there is one)."""
    return [GraphItem(doc_id=d["doc_id"], title=d["title"], text=d.get(version) or d["text"]) for d in DOCS]


@pytest.fixture(scope="session")
def nlp():
    from graph.extract import load_nlp

    return load_nlp(GraphSettings().spacy_model)


@pytest.fixture
def gsettings(tmp_path, model_dir) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_dir=model_dir)


@pytest.fixture
def gengine(gsettings, embedder):
    from graph import GraphEngine

    return GraphEngine(gsettings, embedder=embedder)


@pytest.fixture
def kg(gengine):
    """An engine holding every hand-written document."""
    res = gengine.ingest_texts(items())
    assert res.added == len(DOCS)
    return gengine
