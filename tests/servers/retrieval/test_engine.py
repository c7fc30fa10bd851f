"""The retrieval engine against real embedded Chroma, real bm25s and the real embedding model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.errors import InvalidInput, NotFound
from servers.retrieval.engine import RetrievalEngine, TextItem
from tests.servers.retrieval.helpers import corpus_items, snapshot

C = "kbase"


@pytest.fixture
def kb(engine: RetrievalEngine) -> RetrievalEngine:
    res = engine.ingest_texts(C, corpus_items())
    assert res.added == 10 and res.failed == 0
    return engine


def test_hybrid_finds_by_meaning_and_reports_both_legs(kb):
    res = kb.search(C, "how do I get a new password if I forgot mine", k=3)
    top = res.hits[0]
    assert top.provenance.doc_id == "kb-001"
    assert top.vector is not None and top.vector.rank == 1
    assert top.provenance.title == "Resetting a forgotten password"
    assert top.provenance.source == "kb/kb-001"
    assert top.metadata == {"team": "support", "year": 2023}
    assert top.guard.status == "clean"
    assert top.score == pytest.approx(sum(1 / (60 + leg.rank) for leg in (top.vector, top.bm25) if leg))
    assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)


def test_exact_identifier_found_by_bm25_leg(kb):
    res = kb.search(C, "ZX-9931", k=3)
    assert res.hits[0].provenance.doc_id == "kb-004"
    assert res.hits[0].bm25 is not None and res.hits[0].bm25.rank == 1
    only_bm25 = kb.search(C, "ZX-9931", k=3, mode="bm25")
    assert all(h.vector is None for h in only_bm25.hits)
    assert only_bm25.hits[0].provenance.doc_id == "kb-004"


def test_filter_applies_to_both_legs(kb):
    where = {"$and": [{"team": {"$in": ["security", "platform"]}}, {"year": {"$gte": 2024}}]}
    res = kb.search(C, "password sign in security", k=10, where=where)
    docs = {h.provenance.doc_id for h in res.hits}
    assert docs and docs <= {"kb-002", "kb-008"}
    for h in res.hits:
        assert h.metadata["team"] in ("security", "platform") and h.metadata["year"] >= 2024
    # the BM25 leg alone honours the same filter
    bm = kb.search(C, "password sign in", k=10, where={"team": "billing"}, mode="bm25")
    assert all(h.metadata["team"] == "billing" for h in bm.hits)
    # built-in keys are filterable too
    one = kb.search(C, "anything at all about files", k=10, where={"doc_id": "kb-007"})
    assert {h.provenance.doc_id for h in one.hits} == {"kb-007"}


def test_pagination_covers_without_overlap(kb):
    first = kb.search(C, "account workspace settings", k=4)
    assert first.next_cursor
    second = kb.search(C, "account workspace settings", k=4, cursor=first.next_cursor)
    ids1 = [h.chunk_id for h in first.hits]
    ids2 = [h.chunk_id for h in second.hits]
    assert not set(ids1) & set(ids2)
    full = kb.search(C, "account workspace settings", k=8)
    assert [h.chunk_id for h in full.hits] == ids1 + ids2


def test_unique_documents_and_mmr(engine):
    long_doc = "\n\n".join(f"Paragraph {i} about solar panels and photovoltaic efficiency in winter. " * 8 for i in range(6))
    engine.ingest_texts(C, [TextItem(text=long_doc, doc_id="solar"), *corpus_items()])
    assert engine.get_document(C, "solar").chunks > 2
    plain = engine.search(C, "solar panel efficiency", k=5)
    assert sum(h.provenance.doc_id == "solar" for h in plain.hits) > 1
    unique = engine.search(C, "solar panel efficiency", k=5, unique_documents=True)
    doc_ids = [h.provenance.doc_id for h in unique.hits]
    assert len(doc_ids) == len(set(doc_ids)) and doc_ids[0] == "solar"
    diverse = engine.search(C, "solar panel efficiency", k=5, mmr=True, mmr_lambda=0.3)
    assert sum(h.provenance.doc_id == "solar" for h in diverse.hits) < sum(h.provenance.doc_id == "solar" for h in plain.hits)


def test_reingest_unchanged_changed_and_delete(kb):
    before = snapshot(kb, C)
    again = kb.ingest_texts(C, corpus_items())
    assert again.unchanged == 10 and again.chunks_written == 0
    assert snapshot(kb, C) == before

    old_ids = kb.get_document(C, "kb-004").chunk_ids
    changed = TextItem(text="The error ZX-9931 is now called QUOTA-FULL. Free space or upgrade.", doc_id="kb-004",
                       title="Error code ZX-9931", metadata={"team": "support", "year": 2025})
    res = kb.ingest_texts(C, [changed])
    assert res.replaced == 1
    doc = kb.get_document(C, "kb-004")
    assert "QUOTA-FULL" in doc.text and doc.metadata["year"] == 2025
    assert not set(old_ids) & set(doc.chunk_ids)
    assert not set(old_ids) & kb._bm25_for(C).ids
    assert kb.search(C, "QUOTA-FULL", k=1, mode="bm25").hits[0].provenance.doc_id == "kb-004"

    deleted = kb.delete_document(C, "kb-004")
    assert deleted.chunks_deleted == len(doc.chunk_ids)
    with pytest.raises(NotFound):
        kb.get_document(C, "kb-004")
    assert all(h.provenance.doc_id != "kb-004" for h in kb.search(C, "ZX-9931 quota", k=10).hits)
    st = kb.stats(C)
    assert st.in_sync and st.documents == 9 and st.chunks == st.bm25_chunks


def test_list_documents_paginates(kb):
    page1 = kb.list_documents(C, limit=4)
    assert page1.total == 10 and len(page1.documents) == 4 and page1.next_cursor
    seen = [d.doc_id for d in page1.documents]
    cursor = page1.next_cursor
    while cursor:
        page = kb.list_documents(C, limit=4, cursor=cursor)
        seen += [d.doc_id for d in page.documents]
        cursor = page.next_cursor
    assert sorted(seen) == [f"kb-{i:03d}" for i in range(1, 11)]
    support = kb.list_documents(C, where={"team": "support"})
    assert {d.doc_id for d in support.documents} == {"kb-001", "kb-004", "kb-007"}
    assert {c.name for c in kb.list_collections()} == {C}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda e: e.search(C, "", k=3), "query is empty"),
        (lambda e: e.search(C, "   ", k=3), "query is empty"),
        (lambda e: e.search(C, "pass\x00word", k=3), "NUL"),
        (lambda e: e.search(C, "password", k=0), "k must be between 1 and 100"),
        (lambda e: e.search(C, "password", k=10**9), "k must be between 1 and 100"),
        (lambda e: e.search(C, "password", where={"year": {"$bogus": 1}}), "malformed filter"),
        (lambda e: e.search(C, "password", where={"$and": [{"year": 1}]}), "malformed filter"),
        (lambda e: e.search(C, "password", where={"year": [1, 2]}), "malformed filter"),
        (lambda e: e.search(C, "password", cursor="garbage"), "invalid cursor"),
        (lambda e: e.search(C, "password", mmr_lambda=2), "mmr_lambda"),
        (lambda e: e.search(C, "x" * 5000), "limit is 4000"),
        (lambda e: e.ingest_texts(C, [TextItem(text="bad\x00text", doc_id="n1")]), "NUL"),
        (lambda e: e.ingest_texts(C, [TextItem(text="   ", doc_id="n2")]), "empty"),
        (lambda e: e.ingest_texts(C, [TextItem(text="ok", doc_id="n3", metadata={"doc_id": "x"})]), "reserved"),
        (lambda e: e.ingest_texts(C, [TextItem(text="ok", doc_id="n3", metadata={"tags": ["a"]})]), "string, number or boolean"),
        (lambda e: e.ingest_texts(C, [TextItem(text="ok", doc_id="n4", metadata={"v": float("nan")})]), "finite"),
        (lambda e: e.ingest_texts(C, [TextItem(text="a", doc_id="d"), TextItem(text="b", doc_id="d")]), "twice"),
        (lambda e: e.ingest_texts("no", [TextItem(text="ok")]), "invalid collection name"),
        (lambda e: e.delete_document(C, "missing-doc"), "not in collection"),
        (lambda e: e.get_chunk(C, "missing#chunk-0"), "not in collection"),
        (lambda e: e.list_documents(C, limit=0), "limit must be between"),
    ],
)
def test_bad_input_gets_clear_error_and_index_unchanged(kb, call, match):
    before = snapshot(kb, C)
    with pytest.raises((InvalidInput, NotFound), match=match):
        call(kb)
    assert snapshot(kb, C) == before


def test_big_text_rejected(kb):
    kb.rs.max_text_chars = 1000
    before = snapshot(kb, C)
    with pytest.raises(InvalidInput, match="MAX_TEXT_CHARS"):
        kb.ingest_texts(C, [TextItem(text="word " * 1000, doc_id="big")])
    assert snapshot(kb, C) == before


def test_unknown_collection(engine):
    with pytest.raises(NotFound, match="does not exist"):
        engine.search("nowhere", "password")
    assert engine.list_collections() == []


def test_ingest_path_files_dirs_and_bad_files(kb, roots: Path, tmp_path: Path):
    (roots / "guide").mkdir()
    (roots / "guide" / "a.md").write_text("# Guide\n\n## Setup\n\nInstall the agent with the package manager.\n")
    (roots / "guide" / "b.txt").write_text("Plain notes about the nightly backup window at 02:00.\n")
    (roots / "guide" / "page.html").write_text("<html><head><title>Page</title></head><body><h1>Page</h1><p>HTML body text about caching.</p></body></html>")
    (roots / "guide" / "skip.log").write_text("not a supported suffix")
    (roots / "guide" / "bin.txt").write_bytes(os.urandom(2048) + b"\x00\x00")
    before = snapshot(kb, C)
    res = kb.ingest_path(C, roots / "guide")
    assert res.added == 3 and res.failed == 1
    failed = [d for d in res.documents if d.status == "failed"]
    assert failed[0].source == "guide/bin.txt" and "binary" in failed[0].reason
    hit = kb.search(C, "install the agent", k=1).hits[0]
    assert hit.provenance.source == "guide/a.md" and hit.provenance.heading_path == ["Guide", "Setup"]
    assert kb.ingest_path(C, roots / "guide").unchanged == 3
    only_md = kb.ingest_path("kbase2", roots / "guide", include=["*.md"])
    assert [d.source for d in only_md.documents] == ["guide/a.md"]
    assert snapshot(kb, C) != before

    now = snapshot(kb, C)
    outside = tmp_path / "outside.md"
    outside.write_text("# secret\n\nnot for you")
    with pytest.raises(InvalidInput, match="outside the allowed roots"):
        kb.ingest_path(C, outside)
    with pytest.raises(InvalidInput, match="outside the allowed roots"):
        kb.ingest_path(C, roots / ".." / "outside.md")
    (roots / "link.md").symlink_to(outside)
    with pytest.raises(InvalidInput, match="outside the allowed roots"):
        kb.ingest_path(C, roots / "link.md")
    with pytest.raises(InvalidInput, match="binary"):
        kb.ingest_path(C, roots / "guide" / "bin.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "private.md").write_text("# Private\n\nsalary table")
    (roots / "guide" / "linked").symlink_to(elsewhere, target_is_directory=True)
    relinked = kb.ingest_path(C, roots / "guide")
    assert relinked.unchanged == 3 and all("private" not in d.source for d in relinked.documents)
    big = roots / "big.txt"
    with open(big, "wb") as fh:  # a real 50 MB file
        fh.write(b"a" * (50 * 1024 * 1024))
    with pytest.raises(InvalidInput, match="GUARDRAG_MAX_FILE_MB"):
        kb.ingest_path(C, big)
    with pytest.raises(InvalidInput, match="does not exist"):
        kb.ingest_path(C, roots / "nope.md")
    assert snapshot(kb, C) == now


def test_no_roots_at_the_filesystem_root_refuses_every_path(kb, monkeypatch):
    kb.rs.roots = []
    monkeypatch.chdir("/")
    with pytest.raises(InvalidInput, match="no ingest roots are configured"):
        kb.ingest_path(C, "/etc/hostname")


def test_recovery_rolls_back_interrupted_add(settings, embedder, kb):
    """A journal left in the 'adding' phase (crash mid-upsert) is rolled back at start-up."""
    col = kb._collection(C)
    before = snapshot(kb, C)
    stray = ["kb-999#deadbeef0000-0", "kb-999#deadbeef0000-1"]
    vecs = embedder.embed(["half", "indexed"])
    col.upsert(ids=stray, embeddings=vecs, documents=["half", "indexed"],
               metadatas=[{"doc_id": "kb-999", "position": i, "doc_hash": "x"} for i in range(2)])
    (kb.journal_dir / "1-abc.json").write_text(json.dumps(
        {"id": "1-abc", "collection": C, "phase": "adding", "new_ids": stray, "old_ids": []}))
    fresh = RetrievalEngine(settings, embedder=embedder)
    assert any("rolled back" in r for r in fresh.repairs)
    assert snapshot(fresh, C) == before
    assert not list(fresh.journal_dir.glob("*.json"))


def test_recovery_rebuilds_bm25_from_chroma(settings, embedder, kb):
    before = snapshot(kb, C)
    (kb.state_dir / "bm25" / f"{C}.json.gz").unlink()
    fresh = RetrievalEngine(settings, embedder=embedder)
    assert any("re-synced BM25" in r for r in fresh.repairs)
    assert snapshot(fresh, C) == before
    assert fresh.search(C, "ZX-9931", k=1, mode="bm25").hits[0].provenance.doc_id == "kb-004"


def test_directory_ingest_reads_files_a_batch_at_a_time(engine, roots, monkeypatch):
    """A big tree must not be read into memory whole: files are loaded per transaction."""
    import servers.retrieval.engine as eng

    for i in range(5):
        (roots / f"n{i}.txt").write_text(f"Note number {i} about the weekly release train.")
    (roots / "broken.txt").write_bytes(b"\x00\x01binary")
    monkeypatch.setattr(eng, "_DOC_BATCH", 2)
    loads: list[str] = []
    real_load = eng.loaders.load_file
    monkeypatch.setattr(eng.loaders, "load_file", lambda path, **kw: loads.append(path.name) or real_load(path, **kw))
    seen_at_write: list[int] = []
    real_batch = engine._ingest_batch

    def spy(col, collection, batch, *args):
        seen_at_write.append(len(loads))
        return real_batch(col, collection, batch, *args)

    monkeypatch.setattr(engine, "_ingest_batch", spy)
    res = engine.ingest_path("batched", roots)
    assert res.added == 5 and res.failed == 1
    assert seen_at_write == [2, 4, 6]  # three transactions, each after only its own files were read
    assert engine.stats("batched").in_sync


def test_collection_generation_changes_with_every_write(engine):
    engine.ingest_texts(C, corpus_items())
    (first,) = engine.list_collections()
    assert first.generation
    engine.ingest_texts(C, [TextItem(text="Quota resets at midnight UTC every day.", doc_id="quota")])
    (second,) = engine.list_collections()
    assert second.generation not in (None, first.generation)
    engine.delete_document(C, "quota")
    (third,) = engine.list_collections()
    assert third.generation not in (None, first.generation, second.generation)
    # The chunk count is remembered per generation: it follows every write.
    assert second.chunks == first.chunks + 1 and third.chunks == first.chunks
    # One collection by name (what the orchestrator's cache probes); an unknown name lists nothing.
    engine.ingest_texts("other", [TextItem(text="Another collection.", doc_id="o")])
    assert [c.name for c in engine.list_collections()] == [C, "other"]
    assert engine.list_collections(C) == [third]
    assert engine.list_collections("missing") == []
