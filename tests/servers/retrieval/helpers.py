"""Helpers shared by the retrieval tests."""

from __future__ import annotations

import json
from pathlib import Path

from servers.retrieval.bm25_index import fingerprint
from servers.retrieval.engine import RetrievalEngine, TextItem

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus" / "corpus.jsonl"


def corpus_items() -> list[TextItem]:
    items = []
    for line in CORPUS.read_text().splitlines():
        rec = json.loads(line)
        items.append(TextItem(text=rec["text"], doc_id=rec["doc_id"], title=rec["title"], source=f"kb/{rec['doc_id']}",
                              metadata={"team": rec["team"], "year": rec["year"]}))
    return items


def snapshot(engine: RetrievalEngine, collection: str) -> tuple[str, str, int]:
    """(chroma ids fingerprint, bm25 ids fingerprint, chunk count): equal snapshots mean an unchanged index."""
    col = engine._collection(collection)
    ids = engine._all_ids(col)
    return fingerprint(ids), fingerprint(engine._bm25_for(collection).ids), len(ids)
