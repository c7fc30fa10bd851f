"""Crash consistency: the real retrieval MCP server, killed with SIGKILL in the middle of an ingest.

Each test starts ``python -m servers.retrieval.server`` over stdio, speaks raw JSON-RPC to it
(``initialize``, ``notifications/initialized``, ``tools/call ingest_path`` on a few hundred small
Markdown files), watches the engine's journal directory and kills the process group with SIGKILL:

* as soon as a journal entry exists (first ingest, ``adding`` phase);
* a random delay after the journal appears (mid-upsert, during the BM25 save, or after the end);
* while re-ingesting changed files, frozen (SIGSTOP) and killed exactly in the ``adding`` phase
  (must roll back to the old versions) or in the ``replacing`` phase (must roll forward).

After the kill the on-disk state is exactly the state at the instant of the kill, so the journal
entries still on disk tell what recovery has to repair. The test process then opens
``RetrievalEngine`` (which runs recovery) and checks the promises of the engine's consistency model:
no journal left, BM25 ids == Chroma ids, every document whole (one ``doc_hash``, positions
``0..chunks-1``), search works, and a re-run of the ingest indexes every file exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from servers.retrieval.engine import RetrievalEngine
from tests.conftest import server_env
from tests.servers.retrieval.helpers import snapshot

REPO = Path(__file__).resolve().parents[3]
COLL = "notes"
N_FILES = 300
WORDS = ["backup", "ledger", "quota", "cluster", "region", "invoice", "replica", "cache"]


# ------------------------------------------------------------------------------------------ corpus
def write_notes(root: Path, version: int) -> None:
    """N_FILES one-chunk Markdown notes; ``version`` changes every file's content (and doc_hash)."""
    for i in range(N_FILES):
        (root / f"n{i:04d}.md").write_text(
            f"# Note {i}\n\nMarker NOTE-{i:04d} about the {WORDS[i % len(WORDS)]} (revision v{version}).\n"
        )


def all_doc_ids() -> set[str]:
    return {f"n{i:04d}.md" for i in range(N_FILES)}


def doc_of(chunk_id: str) -> str:
    return chunk_id.split("#", 1)[0]


# ------------------------------------------------------------------------------- raw stdio server
class RawServer:
    """The retrieval server as a subprocess (own process group), spoken to in raw JSON-RPC lines."""

    def __init__(self, settings: Settings, log: Path):
        self.log = log
        self._stderr = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "servers.retrieval.server"], cwd=REPO, env=server_env(settings),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True,
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._next_id = 0

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""

    def send(self, msg: dict[str, Any]) -> None:
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> int:
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        return self._next_id

    def response(self, req_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no response to request {req_id} in {timeout}s\n{self.stderr_tail()}") from None
            if line is None:
                raise AssertionError(f"server closed stdout before answering {req_id}\n{self.stderr_tail()}")
            msg = json.loads(line)
            if msg.get("id") == req_id:
                return msg

    def initialize(self) -> None:
        rid = self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                          "clientInfo": {"name": "crash-test", "version": "0"}})
        res = self.response(rid, timeout=120)
        assert "result" in res, res
        assert "ingest" in res["result"]["instructions"]
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call_tool(self, name: str, arguments: dict[str, Any]) -> int:
        return self.request("tools/call", {"name": name, "arguments": arguments})

    def tool_result(self, req_id: int, timeout: float = 180) -> dict[str, Any]:
        msg = self.response(req_id, timeout)
        assert "result" in msg and not msg["result"].get("isError"), msg
        return msg["result"]["structuredContent"]

    # -- signals: the server is the leader of its own process group --------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def freeze(self) -> None:
        """SIGSTOP and wait until every thread is stopped: the files on disk then stay as they are."""
        os.killpg(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not _all_threads_stopped(self.proc.pid):
            assert time.monotonic() < deadline, "server did not stop on SIGSTOP"
            time.sleep(0.0005)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._stderr.close()


def _all_threads_stopped(pid: int) -> bool:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if stat[stat.rindex(")") + 2] not in "tTZX":
            return False
    return True


@pytest.fixture
def start_server(settings, tmp_path):
    servers: list[RawServer] = []

    def start() -> RawServer:
        server = RawServer(settings, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        server.initialize()
        return server

    yield start
    for server in servers:
        server.close()


# ------------------------------------------------------------------------------------- journal
def journal_dir(settings: Settings) -> Path:
    return settings.data_dir / "retrieval" / "embedded" / "journal"


def journal_entries(settings: Settings) -> list[dict[str, Any]]:
    folder = journal_dir(settings)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):  # removed between listdir and open (process running)
            out.append(json.loads((folder / name).read_text()))
    return out


def wait_for_journal(server: RawServer, settings: Settings, timeout: float = 180) -> None:
    folder = journal_dir(settings)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if any(n.endswith(".json") for n in os.listdir(folder)):
                return
        assert server.alive(), f"server exited before writing a journal entry\n{server.stderr_tail()}"
        assert time.monotonic() < deadline, f"no journal entry after {timeout}s\n{server.stderr_tail()}"
        time.sleep(0.0005)


def kill_in_phase(server: RawServer, settings: Settings, phase: str, timeout: float = 60) -> dict[str, Any]:
    """Freeze the server over and over until its journal says ``phase``, then SIGKILL it while frozen."""
    wait_for_journal(server, settings)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        server.freeze()
        entries = journal_entries(settings)
        phases = [e["phase"] for e in entries]
        if phase in phases:
            server.kill()
            return entries[phases.index(phase)]
        server.thaw()
        if not entries:  # the entry is gone: the transaction committed between two looks
            raise AssertionError(f"transaction committed before phase {phase!r} was caught (saw {seen})")
        if not seen or seen[-1] != phases[0]:
            seen.append(phases[0])
        assert time.monotonic() < deadline, f"never caught phase {phase!r} (saw {seen})"
        time.sleep(0.002)


# -------------------------------------------------------------------------------- the invariants
def chroma_docs(engine: RetrievalEngine) -> dict[str, list[tuple[str, dict[str, Any], str]]]:
    """doc_id -> [(chunk id, metadata, text)] as stored in Chroma."""
    got = engine._collection(COLL).get(include=["metadatas", "documents"])
    docs: dict[str, list[tuple[str, dict[str, Any], str]]] = defaultdict(list)
    for chunk_id, meta, text in zip(got["ids"], got["metadatas"], got["documents"], strict=True):
        docs[meta["doc_id"]].append((chunk_id, meta, text))
    return dict(docs)


def assert_consistent(engine: RetrievalEngine) -> dict[str, list[tuple[str, dict[str, Any], str]]]:
    """No journal, BM25 == Chroma, every document whole, search works. Returns the documents."""
    assert not list(engine.journal_dir.glob("*.json")), "recovery left journal entries behind"
    assert not list(engine.journal_dir.glob("*.tmp")), "recovery left half-written journal files behind"
    chroma_fp, bm25_fp, n_chunks = snapshot(engine, COLL)
    assert chroma_fp == bm25_fp, "BM25 and Chroma hold different chunk ids after recovery"
    docs = chroma_docs(engine)
    assert sum(len(rows) for rows in docs.values()) == n_chunks
    for doc_id, rows in docs.items():
        hashes = {meta["doc_hash"] for _, meta, _ in rows}
        assert len(hashes) == 1, f"{doc_id} mixes chunks of {len(hashes)} versions"
        (doc_hash,) = hashes
        declared = {meta["chunks"] for _, meta, _ in rows}
        assert declared == {len(rows)}, f"{doc_id} is incomplete: {len(rows)} chunks stored, metadata says {declared}"
        assert sorted(meta["position"] for _, meta, _ in rows) == list(range(len(rows)))
        assert all(chunk_id.startswith(f"{doc_id}#{doc_hash[:12]}-") for chunk_id, _, _ in rows)
    stats = engine.stats(COLL)
    assert stats.in_sync and stats.chunks == stats.bm25_chunks == n_chunks
    assert stats.documents == len(docs)
    # both legs still answer, and hits only name chunks that exist
    for mode in ("hybrid", "vector", "bm25"):
        res = engine.search(COLL, "NOTE-0007 backup", k=5, mode=mode)
        if docs and mode != "bm25":
            assert res.hits, f"{mode} search found nothing in a non-empty index"
        assert {h.provenance.doc_id for h in res.hits} <= set(docs)
    if "n0007.md" in docs:
        assert engine.search(COLL, "NOTE-0007", k=1, mode="bm25").hits[0].provenance.doc_id == "n0007.md"
    return docs


def version_of(rows: list[tuple[str, dict[str, Any], str]]) -> str:
    versions = {text.rsplit("revision ", 1)[1].rstrip(").\n") for _, _, text in rows}
    assert len(versions) == 1, versions
    return versions.pop()


def assert_repairs_match_journal(engine: RetrievalEngine, journal: list[dict[str, Any]]) -> None:
    """Every journal entry on disk at kill time is reported as a repair of the matching kind."""
    if not journal:
        return
    assert engine.repairs, "the kill landed mid-transaction but recovery reported no repair"
    for entry in journal:
        if entry["phase"] == "adding":
            want = f"{COLL}: rolled back an interrupted ingest ({len(entry['new_ids'])} chunks)"
        else:
            want = f"{COLL}: completed an interrupted {entry['phase']} ({len(entry['old_ids'])} chunks)"
        assert want in engine.repairs, (want, engine.repairs)


def reingest_and_check(engine: RetrievalEngine, settings: Settings, roots: Path, version: int) -> None:
    """Run the ingest to completion: every file indexed exactly once, at its current version."""
    res = engine.ingest_path(COLL, roots)
    assert res.failed == 0
    assert res.added + res.replaced + res.unchanged == N_FILES
    docs = assert_consistent(engine)
    assert set(docs) == all_doc_ids()
    assert all(len(rows) == 1 for rows in docs.values())  # one chunk per note, no leftovers of older versions
    assert all(version_of(rows) == f"v{version}" for rows in docs.values())
    assert engine.list_documents(COLL, limit=1).total == N_FILES
    for i in random.Random(version).sample(range(N_FILES), 5):
        top = engine.search(COLL, f"NOTE-{i:04d}", k=1, mode="bm25").hits[0]
        assert top.provenance.doc_id == f"n{i:04d}.md"
    again = engine.ingest_path(COLL, roots)
    assert again.unchanged == N_FILES and again.chunks_written == 0
    # recovery converged: a second start finds nothing to repair
    assert RetrievalEngine(settings, embedder=engine._embedder).repairs == []


# ------------------------------------------------------------------------------------- the tests
def test_kill_as_soon_as_the_journal_appears(settings, roots, embedder, start_server):
    write_notes(roots, 1)
    server = start_server()
    server.call_tool("ingest_path", {"path": str(roots), "collection": COLL})
    wait_for_journal(server, settings)
    server.kill()  # SIGKILL right away: the transaction has just begun

    journal = journal_entries(settings)  # the process is dead: this is the state at the kill
    assert [e["phase"] for e in journal] == ["adding"], "the kill should land inside the transaction"
    assert len(journal[0]["new_ids"]) == N_FILES and journal[0]["old_ids"] == []

    engine = RetrievalEngine(settings, embedder=embedder)
    assert_repairs_match_journal(engine, journal)
    docs = assert_consistent(engine)
    assert not set(docs) & {doc_of(i) for i in journal[0]["new_ids"]}, "a rolled-back document survived"
    reingest_and_check(engine, settings, roots, 1)


def test_kill_at_a_later_instant(settings, roots, embedder, start_server):
    write_notes(roots, 1)
    delay = random.uniform(0.0, 0.8)
    server = start_server()
    server.call_tool("ingest_path", {"path": str(roots), "collection": COLL})
    wait_for_journal(server, settings)
    time.sleep(delay)  # somewhere in the upsert, the BM25 save, or already after the commit
    server.kill()

    journal = journal_entries(settings)
    engine = RetrievalEngine(settings, embedder=embedder)
    print(f"killed {delay:.3f}s after the journal appeared; journal phases {[e['phase'] for e in journal]}; "
          f"repairs {engine.repairs}")
    assert_repairs_match_journal(engine, journal)
    docs = assert_consistent(engine)
    if journal:
        assert not set(docs) & {doc_of(i) for i in journal[0]["new_ids"]}, f"delay {delay:.3f}s"
    else:  # committed before the kill: everything is there
        assert set(docs) == all_doc_ids(), f"delay {delay:.3f}s: committed ingest lost documents"
        assert engine.repairs == [], f"delay {delay:.3f}s: nothing to repair after a commit"
    reingest_and_check(engine, settings, roots, 1)


@pytest.mark.parametrize("phase", ["adding", "replacing"])
def test_kill_while_reingesting_changed_files(settings, roots, embedder, start_server, phase):
    write_notes(roots, 1)
    server = start_server()
    first = server.tool_result(server.call_tool("ingest_path", {"path": str(roots), "collection": COLL}))
    assert first["added"] == N_FILES
    assert not journal_entries(settings)

    write_notes(roots, 2)
    server.call_tool("ingest_path", {"path": str(roots), "collection": COLL})
    if phase == "adding":  # let the upsert get going before freezing
        wait_for_journal(server, settings)
        time.sleep(random.uniform(0.0, 0.1))
    entry = kill_in_phase(server, settings, phase)
    journal = journal_entries(settings)
    assert [e["phase"] for e in journal] == [phase]
    assert len(entry["new_ids"]) == len(entry["old_ids"]) == N_FILES

    engine = RetrievalEngine(settings, embedder=embedder)
    assert_repairs_match_journal(engine, journal)
    docs = assert_consistent(engine)
    assert set(docs) == all_doc_ids(), "a document was lost: it must stay whole in one version or the other"
    chroma_ids = {chunk_id for rows in docs.values() for chunk_id, _, _ in rows}
    if phase == "adding":  # rolled back: the old versions, untouched
        assert chroma_ids == set(entry["old_ids"])
        assert all(version_of(rows) == "v1" for rows in docs.values())
    else:  # rolled forward: the new versions only
        assert chroma_ids == set(entry["new_ids"])
        assert all(version_of(rows) == "v2" for rows in docs.values())
    reingest_and_check(engine, settings, roots, 2)
