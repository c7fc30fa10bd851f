"""The store survives a crash mid-write: the previous good snapshot loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from graph import GraphStore
from graph.store import FileGraphStore
from graph.update import Changes, replace_documents
from tests.graph.conftest import items

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def records(nlp):
    from graph.documents import build_records, prepare

    prepared = [prepare(it, 1500) for it in items()]
    return build_records(nlp, prepared, scan=False)


def test_roundtrip_keeps_graph_and_records(tmp_path, records):
    from graph.state import GraphState

    store = FileGraphStore(tmp_path / "g.json.gz")
    assert isinstance(store, GraphStore)
    assert store.load().graph.number_of_nodes() == 0  # nothing committed yet: empty
    state = GraphState()
    replace_documents(state, add=records)
    state.generation = "g1"
    store.commit(state, Changes())
    back = store.load()
    assert back.generation == "g1"
    assert sorted(back.graph.nodes) == sorted(state.graph.nodes)
    assert sorted(back.graph.edges(keys=True)) == sorted(state.graph.edges(keys=True))
    assert back.graph.nodes["red hat"]["docs"] == state.graph.nodes["red hat"]["docs"]
    assert back.aliases.dump() == state.aliases.dump() and set(back.key_docs) == set(state.key_docs)
    assert back.docs["curie"].extraction.mentions == state.docs["curie"].extraction.mentions


def test_failure_between_temp_write_and_rename_keeps_previous_state(tmp_path, records, monkeypatch):
    from graph.state import GraphState

    path = tmp_path / "g.json.gz"
    store = FileGraphStore(path)
    state = GraphState()
    replace_documents(state, add=records[:3])
    state.generation = "old"
    store.commit(state, Changes())
    before = path.read_bytes()

    replace_documents(state, add=records[3:])
    state.generation = "new"

    def crash(src, dst):
        assert Path(src).exists() and Path(src).stat().st_size > 0  # the temp file was written in full
        raise OSError("simulated crash before rename")

    monkeypatch.setattr("graph.store.os.replace", crash)
    with pytest.raises(OSError, match="simulated"):
        store.commit(state, Changes())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = FileGraphStore(path).load()
    assert loaded.generation == "old" and set(loaded.docs) == {r.doc_id for r, _ in records[:3]}


_WRITER = textwrap.dedent("""
    import sys
    from graph.extract import DocExtraction, Mention, Triple
    from graph.state import ChunkRecord, DocRecord, GraphState
    from graph.store import FileGraphStore
    from graph.update import Changes, replace_documents

    def record(j):  # synthetic, no spaCy: this test is about the file, not the extraction
        ms = [Mention(f"entity {j} {i}", f"Entity {j} {i}", "ORG", f"d{j}#0", i * 40, i * 40 + 39) for i in range(3000)]
        ts = [Triple(i, "acquire", i + 1) for i in range(0, 2999, 2)]
        rec = DocRecord(f"d{j}", f"h{j}", None, f"d{j}", {}, [f"d{j}#0"], DocExtraction(ms, ts, []))
        return rec, [ChunkRecord(f"d{j}#0", f"d{j}", 0, "x" * 120_000, "c")]

    records = [record(j) for j in range(4)]
    store = FileGraphStore(sys.argv[1])
    n = 0
    print("ready", flush=True)
    while True:
        state = GraphState()
        replace_documents(state, add=records[: 1 + n % 4])
        state.generation = f"gen-{n}"
        store.commit(state, Changes())
        print(f"committed gen-{n}", flush=True)
        n += 1
""")


def test_kill_9_mid_commit_leaves_a_loadable_previous_or_new_snapshot(tmp_path):
    path = tmp_path / "g.json.gz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env,
                                cwd=ROOT)
        try:
            assert proc.stdout.readline().strip() == "ready"
            committed = []
            while len(committed) < 2 + attempt:
                committed.append(proc.stdout.readline().strip().removeprefix("committed "))
            time.sleep(0.05 * attempt)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        store = FileGraphStore(path)  # cleans temp files a killed commit left
        assert not list(tmp_path.glob(".*.tmp"))
        state = store.load()
        n = int(state.generation.removeprefix("gen-"))
        assert n >= int(committed[-1].removeprefix("gen-"))
        assert len(state.docs) == 1 + n % 4  # the snapshot is whole: its records match its generation
        assert state.graph.number_of_nodes() > 0
