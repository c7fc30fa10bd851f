"""The run/step store: transitions, replay rules, ownership, and a kill -9 in the middle of writing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from client.state import RunStore, default_db_path
from core.errors import Conflict, NotFound


@pytest.fixture
def store(tmp_path: Path):
    with RunStore(tmp_path / "runs.sqlite") as s:
        yield s


def test_default_path_and_wal(tmp_path: Path, store: RunStore):
    assert default_db_path(tmp_path) == tmp_path / "runs.sqlite"
    assert default_db_path(tmp_path, tmp_path / "x.db") == tmp_path / "x.db"
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_run_and_step_lifecycle(store: RunStore):
    run = store.create_run("why?", settings={"k": 3}, versions={"pipeline": "1"})
    assert run.status == "running" and run.pid == os.getpid() and run.settings == {"k": 3}
    store.begin_step(run.id, 1, "retrieve", {"q": "why?"})
    assert store.get_step(run.id, 1).status == "running"
    store.complete_step(run.id, 1, {"hits": [1, 2]}, tokens=7, calls=["abc"], versions={"v": 1})
    step = store.get_step(run.id, 1)
    assert (step.status, step.output, step.tokens, step.calls, step.attempts) == ("done", {"hits": [1, 2]}, 7, ["abc"], 1)
    assert step.duration_ms is not None and step.ended_at >= step.started_at
    # A done step is never redone, and the history must match the pipeline asking for it.
    with pytest.raises(Conflict, match="replayed"):
        store.begin_step(run.id, 1, "retrieve", {})
    store.begin_step(run.id, 2, "critique", {})
    with pytest.raises(Conflict, match="not 'answer'"):
        store.begin_step(run.id, 2, "answer", {})
    store.fail_step(run.id, 2, {"code": "tool_error", "message": "judge down"})
    assert store.get_step(run.id, 2).status == "failed"
    # Ending a step that is not running is refused and changes nothing.
    with pytest.raises(Conflict):
        store.complete_step(run.id, 2, {"x": 1})
    assert store.get_step(run.id, 2).output is None
    # The failed step is redone in place: same row, one more attempt.
    store.begin_step(run.id, 2, "critique", {"again": True})
    store.complete_step(run.id, 2, {"ok": True})
    steps = store.steps(run.id)
    assert [(s.seq, s.name, s.status, s.attempts) for s in steps] == [(1, "retrieve", "done", 1), (2, "critique", "done", 2)]
    store.finish_run(run.id, "done", result={"answer": "because"})
    done = store.get_run(run.id, steps=True)
    assert done.status == "done" and done.result == {"answer": "because"} and len(done.steps) == 2
    assert [r.id for r in store.list_runs()] == [run.id]
    assert store.list_runs(status="failed") == []


def test_claim_rules(store: RunStore):
    with pytest.raises(NotFound):
        store.claim_run("nope")
    done = store.create_run("q")
    store.finish_run(done.id, "done", result={})
    with pytest.raises(Conflict, match="done"):
        store.claim_run(done.id)
    # A run still owned by a live process is not taken over, unless forced.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = store.create_run("q2")
        store._conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (sleeper.pid, live.id))
        with pytest.raises(Conflict, match="still running"):
            store.claim_run(live.id)
        assert store.claim_run(live.id, force=True).pid == os.getpid()
        # Its process dead (killed and reaped): the run is free to resume.
        store._conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (sleeper.pid, live.id))
        sleeper.kill()
        sleeper.wait()
        assert store.claim_run(live.id).status == "running"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_kill_9_while_writing_leaves_whole_transitions(tmp_path: Path):
    db = tmp_path / "runs.sqlite"
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from client.state import RunStore
        s = RunStore({str(db)!r})
        run = s.create_run("q")
        print(run.id, flush=True)
        seq = 0
        while True:
            seq += 1
            s.begin_step(run.id, seq, "step", {{"seq": seq, "pad": "x" * 2000}})
            s.complete_step(run.id, seq, {{"seq": seq, "pad": "y" * 2000}}, tokens=seq)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    with RunStore(db) as store:
        while len(store.steps(run_id)) < 30:  # let it write for a while, then kill it mid-stream
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        steps = store.steps(run_id)
        assert [s.seq for s in steps] == list(range(1, len(steps) + 1))
        # Every step but the last is done with its output; the last is done, or running with no output.
        for s in steps[:-1]:
            assert s.status == "done" and s.output["seq"] == s.seq and s.tokens == s.seq
        last = steps[-1]
        assert (last.status == "done" and last.output["seq"] == last.seq) or (last.status == "running" and last.output is None)
        # The run is resumable: its process is gone; a running last step is redone in place.
        store.claim_run(run_id)
        if last.status == "running":
            store.begin_step(run_id, last.seq, "step", {})
            assert store.get_step(run_id, last.seq).attempts == 2


def test_audit_entries_are_written_in_order_by_the_audit_thread(tmp_path: Path):
    """Entries are queued (a payload given as a function is built on the audit thread), written in append order,
    stamped with the time they were appended; `audit` waits for the queue, and `close` writes what is left."""
    import threading

    gate = threading.Event()
    built_on: list[str] = []

    def slow() -> dict:
        gate.wait(10)
        built_on.append(threading.current_thread().name)
        return {"n": 2}

    def broken() -> dict:
        raise ValueError("secret@example.com is not anonymisable")

    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create_run("q?")
    before = time.time()
    store.append_audit(run.id, "first", {"n": 1})
    store.append_audit(run.id, "second", slow)
    store.append_audit(run.id, "third", broken)
    store.append_audit(run.id, "fourth", {"n": 4})
    raw = sqlite3.connect(store.path)
    assert raw.execute("SELECT COUNT(*) FROM audit").fetchone()[0] <= 1  # held behind the slow entry
    gate.set()
    entries = store.audit(run.id)  # waits for the queue
    assert [e.kind for e in entries] == ["first", "second", "audit_error", "fourth"]
    assert entries[1].payload == {"n": 2} and built_on == ["guardrag-audit"]
    # A payload that cannot be built leaves a visible gap, without the exception's message (it may hold PII).
    assert entries[2].payload == {"entry": "third", "error": "ValueError"}
    assert all(before <= e.at <= time.time() for e in entries)
    gate.clear()
    store.append_audit(run.id, "fifth", lambda: {"n": 5})
    store.close()  # writes the queued entry before closing
    with RunStore(tmp_path / "runs.sqlite") as again:
        assert [e.kind for e in again.audit(run.id)][-1] == "fifth"


@pytest.mark.parametrize(("sync", "pragma"), [("normal", 1), ("full", 2)])
def test_sync_mode(tmp_path: Path, sync, pragma):
    with RunStore(tmp_path / "runs.sqlite", sync=sync) as s:
        assert s._read("PRAGMA synchronous", one=True)[0] == pragma
