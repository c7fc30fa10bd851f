"""The retrieval engine and MCP server against a real Chroma server (``chroma run``), not embedded Chroma.

One ``chroma run`` process (loopback, free port, telemetry off, its own process group) serves the
whole module; every test uses its own collection so they do not depend on each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from core.errors import InvalidInput, Unavailable
from core.settings import RetrievalSettings, Settings
from servers.retrieval.engine import RetrievalEngine, TextItem
from tests.conftest import free_port, server_env
from tests.servers.retrieval.helpers import corpus_items, snapshot

REPO = Path(__file__).resolve().parents[3]
KB = "kbase"


class ChromaServer:
    def __init__(self, url: str, proc: subprocess.Popen, path: Path, log: Path):
        self.url, self.proc, self.path, self.log = url, proc, path, log

    def client(self):
        """A plain Chroma client, to look at what the server holds without going through guardrag."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        port = int(self.url.rsplit(":", 1)[1])
        return chromadb.HttpClient(host="127.0.0.1", port=port, settings=ChromaSettings(anonymized_telemetry=False))


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory) -> ChromaServer:
    exe = Path(sys.executable).with_name("chroma")
    assert exe.is_file(), f"the chroma CLI is not installed next to {sys.executable}"
    base = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "CHROMA_TELEMETRY": "False", "DO_NOT_TRACK": "1"}
    log = base / "chroma.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "run", "--path", str(base / "db"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(trust_env=False, timeout=1.0) as http:
            while True:
                assert proc.poll() is None, f"chroma run exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                try:
                    if http.get(f"{url}/api/v2/heartbeat").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"chroma did not answer in 60s:\n{log.read_text()[-3000:]}"
                time.sleep(0.1)
        yield ChromaServer(url, proc, base / "db", log)
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def cs_settings(tmp_path_factory, model_dir, chroma_server) -> Settings:
    base = tmp_path_factory.mktemp("guardrag-cs")
    roots = base / "docs"
    roots.mkdir()
    return Settings(data_dir=base / "data", model_dir=model_dir, chroma_url=chroma_server.url,
                    retrieval=RetrievalSettings(roots=[roots]))


@pytest.fixture(scope="module")
def cs_engine(cs_settings, embedder) -> RetrievalEngine:
    return RetrievalEngine(cs_settings, embedder=embedder)


@pytest.fixture(scope="module")
def kb(cs_engine) -> RetrievalEngine:
    res = cs_engine.ingest_texts(KB, corpus_items())
    assert res.added == 10 and res.failed == 0
    return cs_engine


def test_ingest_lands_in_the_server_and_hybrid_search_works(kb, cs_settings, chroma_server):
    st = kb.stats(KB)
    assert st.chroma == chroma_server.url
    assert st.in_sync and st.documents == 10 and st.chunks == st.bm25_chunks > 0
    # the chunks live in the Chroma server: a plain client sees them, and no embedded store was made
    raw = chroma_server.client().get_collection(KB)
    assert raw.count() == st.chunks
    assert raw.metadata.get("guardrag") == 1
    assert not cs_settings.chroma_path.exists()
    assert kb.state_dir.name == f"http_127_0_0_1_{chroma_server.url.rsplit(':', 1)[1]}"

    res = kb.search(KB, "ZX-9931", k=3)
    top = res.hits[0]
    assert top.provenance.doc_id == "kb-004"
    assert top.bm25 is not None and top.bm25.rank == 1
    assert top.vector is not None
    meaning = kb.search(KB, "how do I get a new password if I forgot mine", k=3)
    assert meaning.hits[0].provenance.doc_id == "kb-001" and meaning.hits[0].vector.rank == 1


def test_filter_applies_to_both_legs(kb):
    where = {"$and": [{"team": {"$in": ["security", "platform"]}}, {"year": {"$gte": 2024}}]}
    res = kb.search(KB, "password sign in security", k=10, where=where)
    docs = {h.provenance.doc_id for h in res.hits}
    assert docs and docs <= {"kb-002", "kb-008"}
    for h in res.hits:
        assert h.metadata["team"] in ("security", "platform") and h.metadata["year"] >= 2024
    # each leg alone honours the same filter: unfiltered, "password" matches kb-001 first
    query = "forgotten password and invoices"
    assert kb.search(KB, query, k=10, mode="bm25").hits[0].provenance.doc_id == "kb-001"
    for mode in ("bm25", "vector"):
        only = kb.search(KB, query, k=10, where={"team": "billing"}, mode=mode)
        assert {h.provenance.doc_id for h in only.hits} == {"kb-003"}, mode
    one = kb.search(KB, "anything at all about files", k=10, where={"doc_id": "kb-007"})
    assert {h.provenance.doc_id for h in one.hits} == {"kb-007"}


@pytest.mark.parametrize("where", [
    {"year": {"$bogus": 1}},
    {"$and": [{"year": 1}]},
    {"year": [1, 2]},
    {"team": {"$regex": "a"}},
])
def test_bad_filter_is_invalid_input_and_changes_nothing(kb, where):
    before = snapshot(kb, KB)
    with pytest.raises(InvalidInput, match="malformed filter"):
        kb.search(KB, "password", where=where)
    with pytest.raises(InvalidInput, match="malformed filter"):
        kb.list_documents(KB, where=where)
    assert snapshot(kb, KB) == before


def test_reingest_unchanged_is_a_noop_and_delete_clears_both_indexes(cs_engine, chroma_server):
    coll = "kbase-mut"
    assert cs_engine.ingest_texts(coll, corpus_items()).added == 10
    before = snapshot(cs_engine, coll)
    again = cs_engine.ingest_texts(coll, corpus_items())
    assert again.unchanged == 10 and again.chunks_written == 0 and again.chunks_deleted == 0
    assert snapshot(cs_engine, coll) == before

    changed = TextItem(text="The error ZX-9931 is now called QUOTA-FULL. Free space or upgrade.", doc_id="kb-004",
                       title="Error code ZX-9931", metadata={"team": "support", "year": 2025})
    old_ids = cs_engine.get_document(coll, "kb-004").chunk_ids
    assert cs_engine.ingest_texts(coll, [changed]).replaced == 1
    doc = cs_engine.get_document(coll, "kb-004")
    assert "QUOTA-FULL" in doc.text and not set(old_ids) & set(doc.chunk_ids)
    assert not set(old_ids) & cs_engine._bm25_for(coll).ids

    deleted = cs_engine.delete_document(coll, "kb-004")
    assert deleted.chunks_deleted == len(doc.chunk_ids)
    raw = chroma_server.client().get_collection(coll)
    assert raw.get(where={"doc_id": "kb-004"})["ids"] == []
    assert not set(doc.chunk_ids) & cs_engine._bm25_for(coll).ids
    assert all(h.provenance.doc_id != "kb-004" for h in cs_engine.search(coll, "ZX-9931 QUOTA-FULL", k=10).hits)
    st = cs_engine.stats(coll)
    assert st.in_sync and st.documents == 9 and st.chunks == st.bm25_chunks == raw.count()


def test_a_new_data_dir_rebuilds_bm25_from_the_server(kb, tmp_path, model_dir, embedder, chroma_server):
    fresh = RetrievalEngine(Settings(data_dir=tmp_path / "other", model_dir=model_dir, chroma_url=chroma_server.url),
                            embedder=embedder)
    assert any(r.startswith(f"{KB}: re-synced BM25") for r in fresh.repairs)
    assert snapshot(fresh, KB) == snapshot(kb, KB)
    assert fresh.search(KB, "ZX-9931", k=1, mode="bm25").hits[0].provenance.doc_id == "kb-004"


def test_two_instances_on_one_chroma_server_see_each_others_writes(tmp_path, model_dir, embedder, chroma_server):
    """Replicas behind a load balancer share one Chroma server but not a data dir: BM25 must follow."""
    coll = "kbase-replicas"
    a = RetrievalEngine(Settings(data_dir=tmp_path / "a", model_dir=model_dir, chroma_url=chroma_server.url),
                        embedder=embedder)
    b = RetrievalEngine(Settings(data_dir=tmp_path / "b", model_dir=model_dir, chroma_url=chroma_server.url),
                        embedder=embedder)
    a.ingest_texts(coll, [TextItem(text="The ORCHID-1 valve needs a torque of 40 Nm.", doc_id="d1")])
    hits = b.search(coll, "ORCHID-1", k=3, mode="bm25").hits
    assert [h.provenance.doc_id for h in hits] == ["d1"]
    assert b.stats(coll).in_sync
    b.ingest_texts(coll, [TextItem(text="The LOTUS-2 pump runs at 1450 rpm.", doc_id="d2")])
    time.sleep(1.1)  # instances re-check the collection's generation marker at most once a second
    assert [h.provenance.doc_id for h in a.search(coll, "LOTUS-2", k=3, mode="bm25").hits] == ["d2"]
    a.delete_document(coll, "d1")
    time.sleep(1.1)
    assert b.search(coll, "ORCHID-1", k=3, mode="bm25").hits == []
    assert a.stats(coll).in_sync and b.stats(coll).in_sync


def test_unreachable_server_is_a_clear_error(tmp_path, model_dir):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable, match=f"cannot open Chroma at {url}"):
        RetrievalEngine(Settings(data_dir=tmp_path / "d", model_dir=model_dir, chroma_url=url))
    with pytest.raises(InvalidInput, match="must look like http://host:port"):
        RetrievalEngine(Settings(data_dir=tmp_path / "d", model_dir=model_dir, chroma_url="ftp://127.0.0.1:1"))




@pytest.mark.anyio
async def test_mcp_server_over_stdio_uses_the_chroma_server(kb, cs_settings, chroma_server):
    env = server_env(cs_settings)
    assert env["GUARDRAG_CHROMA_URL"] == chroma_server.url
    params = StdioServerParameters(command=sys.executable, args=["-m", "servers.retrieval.server"], env=env,
                                   cwd=str(REPO))
    async with Client(params) as client:
        res = await client.call_tool("search", {"query": "ZX-9931", "k": 3, "collection": KB})
        assert not res.is_error, res.content
        hit = res.structured_content["hits"][0]
        assert hit["provenance"]["doc_id"] == "kb-004" and hit["bm25"]["rank"] == 1
        st = await client.call_tool("stats", {"collection": KB})
        assert st.structured_content["chroma"] == chroma_server.url and st.structured_content["in_sync"]
        added = await client.call_tool("ingest_text", {
            "text": "The staging cluster is called HELIOTROPE-7 and lives in region eu-west.",
            "doc_id": "staging", "collection": "kbase-mcp"})
        assert not added.is_error and added.structured_content["added"] == 1
        bad = await client.call_tool("search", {"query": "x", "filter": {"year": {"$bogus": 1}}, "collection": KB})
        assert bad.is_error and "malformed filter" in bad.content[0].text
    # written by the server process, visible here: same Chroma server, same BM25 state dir
    hit = kb.search("kbase-mcp", "HELIOTROPE-7", k=1, mode="bm25").hits[0]
    assert hit.provenance.doc_id == "staging"
    assert chroma_server.client().get_collection("kbase-mcp").count() == 1
