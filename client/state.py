"""Persisted runs and steps of the orchestrator, in SQLite.

One row per run (question, status, settings and versions, result or error) and one row per step
(``run_id``, ``seq``): its name, input, output, status (``pending | running | done | failed``),
attempts, start and end, duration, tokens, the tool calls it made, and versions.

Durability: WAL journal and **one transaction per step transition** (begin, done, failed), so a
``kill -9`` at any instant leaves each step either as it was or fully moved to its next state. With
``sync="normal"`` (the default) a power cut may also undo the last commits (never half of one); ``"full"``
flushes every commit to disk. A step found ``running`` when a run is resumed was in flight when
its process died: it is redone in place (same row, ``attempts`` + 1), never duplicated; a ``done``
step is never redone, its stored output is replayed instead.

Run statuses: ``running`` (in progress, or its process died), ``failed`` (a step raised: resumable),
``tripped`` (a circuit breaker ended it: final), ``done`` (final), ``awaiting_approval`` (the answer is held
until a person approves or rejects it), ``rejected`` (final).

Two more tables: ``usage`` (tokens in and out and their cost, per step and model, written in the step's own
transaction, so a replayed step is never counted twice and a redone one is counted as the spend it was) and
``audit`` (the decision record of a run; append-only: SQLite triggers refuse UPDATE and DELETE).

Audit entries are written by one background thread per store, in the order they were appended, so that what
an entry costs to build (the pipeline anonymises questions and answers with Presidio) stays off a run's path:
:meth:`RunStore.audit` and :meth:`RunStore.close` wait for the queue, and so does the interpreter's exit. An
entry appended in the milliseconds before a ``kill -9`` can be lost; the run's own rows cannot.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, Field

from core.errors import Conflict, NotFound

__all__ = ["AuditEntry", "RunRecord", "RunStore", "StepRecord", "Usage", "default_db_path"]

log = logging.getLogger(__name__)

AuditPayload = dict[str, Any] | Callable[[], dict[str, Any]]

RunStatus = Literal["running", "failed", "tripped", "done", "awaiting_approval", "rejected"]
StepStatus = Literal["pending", "running", "done", "failed"]
FINAL = ("done", "tripped", "rejected")
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    question TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    pid INTEGER,
    settings TEXT NOT NULL DEFAULT '{}',
    versions TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    input TEXT,
    output TEXT,
    error TEXT,
    started_at REAL,
    ended_at REAL,
    duration_ms REAL,
    tokens INTEGER NOT NULL DEFAULT 0,
    calls TEXT NOT NULL DEFAULT '[]',
    timings TEXT NOT NULL DEFAULT '{}',
    versions TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS usage (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    step TEXT NOT NULL,
    model TEXT NOT NULL,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    priced INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS usage_at ON usage(at);
CREATE INDEX IF NOT EXISTS usage_run ON usage(run_id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_run ON audit(run_id, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END
"""


class Usage(BaseModel):
    """Tokens one step spent with one model, and what they cost (0 for offline backends)."""

    model: str = Field(description="backend:model, e.g. openai-compatible:gpt-4o-mini, or offline:embedder.")
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    priced: bool = Field(True, description="False when the model has no entry in the price table.")


class AuditEntry(BaseModel):
    id: int
    run_id: str
    at: float
    kind: str
    payload: dict[str, Any] = Field(default_factory=dict)


def default_db_path(data_dir: Path, configured: Path | None = None) -> Path:
    """The runs database: the configured path, else ``data_dir/runs.sqlite``."""
    return Path(configured).expanduser() if configured else Path(data_dir) / "runs.sqlite"


class StepRecord(BaseModel):
    """One step of a run as stored."""

    run_id: str
    seq: int
    name: str
    status: StepStatus
    attempts: int = 0
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    ended_at: float | None = None
    duration_ms: float | None = None
    tokens: int = 0
    calls: list[str] = Field(default_factory=list, description="Fingerprints of the tool calls the step made.")
    timings: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)


class RunRecord(BaseModel):
    """One run as stored (``steps`` filled by :meth:`RunStore.get_run` with ``steps=True``)."""

    id: str
    question: str
    status: RunStatus
    created_at: float
    updated_at: float
    pid: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    steps: list[StepRecord] = Field(default_factory=list)


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(value, ensure_ascii=False, default=str)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class RunStore:
    """The SQLite store of runs and steps. One connection per store, shared by the threads that use the store (a
    lock keeps their transactions apart) and by its audit thread."""

    def __init__(self, path: Path | str, *, sync: Literal["normal", "full"] = "normal") -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()  # one transaction at a time on the shared connection
        self._audit_queue: queue.Queue[tuple[str, str, AuditPayload, float] | None] = queue.Queue()
        self._audit_writer: threading.Thread | None = None
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=" + {"normal": "NORMAL", "full": "FULL"}[sync])
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._tx() as c:  # not executescript: it commits on its own
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";\n"))):
                c.execute(statement)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Write the queued audit entries, then close the connection."""
        writer = self._audit_writer
        if writer is not None:
            self._audit_queue.put(None)
            writer.join()
            self._audit_writer = None
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: writers queue instead of failing half-way)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = (), *, one: bool = False) -> Any:
        """One query, never inside another thread's open transaction on the shared connection."""
        with self._lock:
            cur = self._conn.execute(sql, args)
            return cur.fetchone() if one else cur.fetchall()

    # ---------------------------------------------------------------- runs

    def create_run(self, question: str, *, settings: dict[str, Any] | None = None,
                   versions: dict[str, Any] | None = None, run_id: str | None = None) -> RunRecord:
        """A new run in status ``running``, owned by this process."""
        now = time.time()
        run_id = run_id or uuid.uuid4().hex[:16]
        with self._tx() as c:
            c.execute("INSERT INTO runs (id, question, status, created_at, updated_at, pid, settings, versions) "
                      "VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                      (run_id, question, now, now, os.getpid(), _dump(settings or {}), _dump(versions or {})))
        return self.get_run(run_id)

    def claim_run(self, run_id: str, *, force: bool = False) -> RunRecord:
        """Take over a run to resume it: it must not be finished, nor live in another process (unless ``force``)."""
        with self._tx() as c:
            row = c.execute("SELECT status, pid FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run {run_id!r}; `guardrag runs list` shows the runs")
            if row["status"] in (*FINAL, "awaiting_approval"):
                hint = ("; settle it with `guardrag runs approve|reject`" if row["status"] == "awaiting_approval"
                        else "")
                raise Conflict(f"run {run_id} is {row['status']}; only a running or failed run can be resumed{hint}",
                               details={"status": row["status"]})
            if (row["status"] == "running" and not force and row["pid"] and row["pid"] != os.getpid()
                    and _alive(row["pid"])):
                raise Conflict(f"run {run_id} is still running in process {row['pid']}; pass --force to take it over",
                               details={"pid": row["pid"]})
            c.execute("UPDATE runs SET status = 'running', pid = ?, error = NULL, updated_at = ? WHERE id = ?",
                      (os.getpid(), time.time(), run_id))
        return self.get_run(run_id)

    def finish_run(self, run_id: str, status: RunStatus, *, result: Any = None, error: Any = None) -> None:
        """Record how a run ended (``done``, ``tripped`` or ``failed``) with its result or error object."""
        with self._tx() as c:
            c.execute("UPDATE runs SET status = ?, result = ?, error = ?, updated_at = ? WHERE id = ?",
                      (status, _dump(result), _dump(error), time.time(), run_id))

    def settle_run(self, run_id: str, status: RunStatus, *, result: Any) -> None:
        """Settle a run that awaits approval (``done`` or ``rejected``); a Conflict when it no longer awaits."""
        with self._tx() as c:
            cur = c.execute("UPDATE runs SET status = ?, result = ?, updated_at = ? WHERE id = ? "
                            "AND status = 'awaiting_approval'", (status, _dump(result), time.time(), run_id))
            if cur.rowcount != 1:
                raise Conflict(f"run {run_id} does not await approval (any more)")

    def get_run(self, run_id: str, *, steps: bool = False) -> RunRecord:
        row = self._read("SELECT * FROM runs WHERE id = ?", (run_id,), one=True)
        if row is None:
            raise NotFound(f"no run {run_id!r}; `guardrag runs list` shows the runs")
        run = _run(row)
        if steps:
            run.steps = self.steps(run_id)
        return run

    def list_runs(self, limit: int = 20, status: str | None = None) -> list[RunRecord]:
        """The most recent runs first."""
        sql, args = "SELECT * FROM runs", []
        if status:
            sql, args = sql + " WHERE status = ?", [status]
        rows = self._read(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [_run(r) for r in rows]

    # ---------------------------------------------------------------- steps

    def steps(self, run_id: str) -> list[StepRecord]:
        rows = self._read("SELECT * FROM steps WHERE run_id = ? ORDER BY seq", (run_id,))
        return [_step(r) for r in rows]

    def get_step(self, run_id: str, seq: int) -> StepRecord | None:
        row = self._read("SELECT * FROM steps WHERE run_id = ? AND seq = ?", (run_id, seq), one=True)
        return None if row is None else _step(row)

    def begin_step(self, run_id: str, seq: int, name: str, input: Any) -> StepRecord:
        """Mark step ``seq`` running (inserting it, or redoing a pending/running/failed one in place).

        Raises :class:`Conflict` when the step is already done (done steps are replayed, never redone)
        or when the row at ``seq`` is a different step (the run's history does not match this pipeline)."""
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT name, status FROM steps WHERE run_id = ? AND seq = ?", (run_id, seq)).fetchone()
            if row is None:
                c.execute("INSERT INTO steps (run_id, seq, name, status, attempts, input, started_at) "
                          "VALUES (?, ?, ?, 'running', 1, ?, ?)", (run_id, seq, name, _dump(input), now))
            else:
                if row["name"] != name:
                    raise Conflict(f"run {run_id} step {seq} is {row['name']!r}, not {name!r}: the stored history "
                                   "does not match this pipeline")
                if row["status"] == "done":
                    raise Conflict(f"run {run_id} step {seq} ({name}) is done; it is replayed, not redone")
                c.execute("UPDATE steps SET status = 'running', attempts = attempts + 1, input = ?, output = NULL, "
                          "error = NULL, started_at = ?, ended_at = NULL, duration_ms = NULL "
                          "WHERE run_id = ? AND seq = ?", (_dump(input), now, run_id, seq))
            c.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, run_id))
        step = self.get_step(run_id, seq)
        assert step is not None
        return step

    def complete_step(self, run_id: str, seq: int, output: Any, *, tokens: int = 0, calls: list[str] | None = None,
                      timings: dict[str, Any] | None = None, versions: dict[str, Any] | None = None,
                      usage: list[Usage] | None = None) -> None:
        """Mark a running step done with its output and what it spent (one transaction)."""
        self._end_step(run_id, seq, "done", output=output, error=None, tokens=tokens, calls=calls, timings=timings,
                       versions=versions, usage=usage)

    def fail_step(self, run_id: str, seq: int, error: Any, *, tokens: int = 0, calls: list[str] | None = None,
                  timings: dict[str, Any] | None = None, usage: list[Usage] | None = None) -> None:
        """Mark a running step failed with an error object (one transaction); it is redone on resume."""
        self._end_step(run_id, seq, "failed", output=None, error=error, tokens=tokens, calls=calls, timings=timings,
                       versions=None, usage=usage)

    def _end_step(self, run_id: str, seq: int, status: StepStatus, *, output: Any, error: Any, tokens: int,
                  calls: list[str] | None, timings: dict[str, Any] | None, versions: dict[str, Any] | None,
                  usage: list[Usage] | None = None) -> None:
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT status, started_at, name FROM steps WHERE run_id = ? AND seq = ?",
                            (run_id, seq)).fetchone()
            if row is None or row["status"] != "running":
                raise Conflict(f"run {run_id} step {seq} is not running; it cannot end as {status}")
            duration = round((now - (row["started_at"] or now)) * 1000, 3)
            c.execute("UPDATE steps SET status = ?, output = ?, error = ?, ended_at = ?, duration_ms = ?, tokens = ?, "
                      "calls = ?, timings = ?, versions = ? WHERE run_id = ? AND seq = ?",
                      (status, _dump(output), _dump(error), now, duration, tokens, _dump(calls or []),
                       _dump(timings or {}), _dump(versions or {}), run_id, seq))
            for u in usage or []:
                c.execute("INSERT INTO usage (run_id, seq, at, step, model, tokens_in, tokens_out, cost, priced) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (run_id, seq, now, row["name"], u.model, u.tokens_in,
                                                                 u.tokens_out, u.cost, int(u.priced)))
            c.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, run_id))

    # ---------------------------------------------------------------- cost

    def usage(self, run_id: str | None = None, *, since: float | None = None) -> list[dict[str, Any]]:
        """Usage rows (of one run, or since a time), oldest first."""
        sql, args = "SELECT * FROM usage WHERE 1 = 1", []
        if run_id is not None:
            sql, args = sql + " AND run_id = ?", [*args, run_id]
        if since is not None:
            sql, args = sql + " AND at >= ?", [*args, since]
        return [dict(r) for r in self._read(sql + " ORDER BY at, rowid", args)]

    def cost_since(self, since: float) -> float:
        """Total cost of everything spent since ``since`` (epoch seconds), all runs."""
        row = self._read("SELECT COALESCE(SUM(cost), 0) AS c FROM usage WHERE at >= ?", (since,), one=True)
        return float(row["c"])

    # ---------------------------------------------------------------- audit

    def append_audit(self, run_id: str, kind: str, payload: AuditPayload) -> None:
        """Append one entry to a run's audit trail (never changed or deleted afterwards). It is queued and written
        by the store's audit thread, in append order, stamped with the time of this call; a ``payload`` given as a
        function is called there. A payload that cannot be built is recorded as an ``audit_error`` entry."""
        if self._audit_writer is None:
            with self._lock:
                if self._audit_writer is None:
                    self._audit_writer = threading.Thread(target=self._write_audit, name="guardrag-audit",
                                                          daemon=True)
                    self._audit_writer.start()
                    _OPEN.add(self)
        self._audit_queue.put((run_id, kind, payload, time.time()))

    def flush_audit(self) -> None:
        """Wait until every queued audit entry is written."""
        if self._audit_writer is not None and self._audit_writer is not threading.current_thread():
            self._audit_queue.join()

    def _write_audit(self) -> None:
        while True:
            item = self._audit_queue.get()
            try:
                if item is None:
                    return
                run_id, kind, payload, at = item
                try:
                    built = payload() if callable(payload) else payload
                except Exception as exc:  # noqa: BLE001 - recorded in the trail itself: it must show the gap
                    log.exception("could not build the %s audit entry of run %s", kind, run_id)
                    kind, built = "audit_error", {"entry": kind, "error": type(exc).__name__}
                try:
                    with self._tx() as c:
                        c.execute("INSERT INTO audit (run_id, at, kind, payload) VALUES (?, ?, ?, ?)",
                                  (run_id, at, kind, _dump(built)))
                except Exception:  # noqa: BLE001 - the thread must live on for the next entries
                    log.exception("could not write the %s audit entry of run %s", kind, run_id)
            finally:
                self._audit_queue.task_done()

    def audit(self, run_id: str, *, wait: bool = True) -> list[AuditEntry]:
        """A run's audit trail, in order; ``wait``: after the queued entries are written."""
        if wait:
            self.flush_audit()
        rows = self._read("SELECT * FROM audit WHERE run_id = ? ORDER BY id", (run_id,))
        return [AuditEntry(id=r["id"], run_id=r["run_id"], at=r["at"], kind=r["kind"], payload=_load(r["payload"]) or {})
                for r in rows]


_OPEN: weakref.WeakSet[RunStore] = weakref.WeakSet()


@atexit.register
def _flush_open_stores() -> None:
    """At exit, write what the audit threads still hold (they are daemons: nothing else waits for them)."""
    for store in list(_OPEN):
        try:
            store.flush_audit()
        except Exception:  # noqa: BLE001 - exiting anyway
            log.exception("could not flush the audit entries of %s", store.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is not alive for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(id=row["id"], question=row["question"], status=row["status"], created_at=row["created_at"],
                     updated_at=row["updated_at"], pid=row["pid"], settings=_load(row["settings"]) or {},
                     versions=_load(row["versions"]) or {}, result=_load(row["result"]), error=_load(row["error"]))


def _step(row: sqlite3.Row) -> StepRecord:
    return StepRecord(run_id=row["run_id"], seq=row["seq"], name=row["name"], status=row["status"],
                      attempts=row["attempts"], input=_load(row["input"]), output=_load(row["output"]),
                      error=_load(row["error"]), started_at=row["started_at"], ended_at=row["ended_at"],
                      duration_ms=row["duration_ms"], tokens=row["tokens"], calls=_load(row["calls"]) or [],
                      timings=_load(row["timings"]) or {}, versions=_load(row["versions"]) or {})
