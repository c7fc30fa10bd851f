"""Semantic answer cache: answers reused for questions that mean the same thing, within one exact scope.

An entry is ``(scope, question vector, question, run id, value)``. :meth:`SemanticCache.lookup` returns the most
similar cached question of the *same scope* when its cosine similarity is at least ``threshold``; anything else
is a miss. The **scope** is a dict the caller builds from whatever makes an answer valid (collection, index
version, filters, guard/judge policy versions, model ...); it is hashed canonically (JSON with sorted keys, no
whitespace, SHA-256), so two scopes match only when they are equal as JSON values. A changed index version or
policy therefore misses by construction, and :meth:`SemanticCache.invalidate` removes the stale entries.

Storage is one SQLite file (WAL, short transactions, ``busy_timeout``), so several processes can share it.
Vectors live in memory as one float32 matrix per scope, loaded lazily from SQLite on the first lookup in that
scope; a commit by another process (``PRAGMA data_version``) makes this process reload the matrices it holds.
A lookup is then one matrix-vector product plus a primary-key read; a hit's ``last_used`` and hit count are
written in batches (by every put before it evicts, and every 64 hits or ``touch_flush_s``), so lookups rarely
take the write lock.

**Lexical guard.** Sentence embeddings put a question and its opposite close together ("Does X increase Y?" /
"Does X decrease Y?", "When was ...?" / "Where was ...?", "minimum" / "maximum", "Saturday" / "Sunday" score 0.95
and more), so a similarity threshold alone serves wrong answers. When the caller passes the asked question's text,
a candidate above the threshold is rejected (and the next one tried) if the two questions :func:`conflict`: a
different number, a negation on one side only, different values of one exclusive word class (up/down, min/max,
start/end, before/after, who/when/where/why, days, months, periods ...), or a named entity on each side that the
other lacks. This costs a few microseconds per candidate; ``bench/cache.py`` measures what it buys.

The cache is size-bounded: after a :meth:`put` over ``max_entries`` entries, the least recently used entries
(``last_used``: put or hit time) are evicted, across all scopes.

Only answers that passed belong here: :meth:`put` takes ``passed=`` explicitly and refuses ``passed=False``
(:class:`CacheRefused`), as it refuses non-finite or mis-sized vectors and values that are not JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

__all__ = ["CACHE_VERSION", "CacheHit", "CacheRefused", "CacheStats", "SemanticCache", "conflict", "scope_key"]

CACHE_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    scope     TEXT    NOT NULL,
    question  TEXT    NOT NULL,
    vector    BLOB    NOT NULL,
    run_id    TEXT,
    value     TEXT    NOT NULL,
    created   REAL    NOT NULL,
    last_used REAL    NOT NULL,
    hits      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_scope ON entries(scope);
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_used);
CREATE TABLE IF NOT EXISTS scopes (
    scope TEXT PRIMARY KEY,
    body  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class CacheRefused(ValueError):
    """:meth:`SemanticCache.put` would not store this entry (failed run, bad vector, value not JSON)."""


class CacheHit(BaseModel):
    """A cached answer for a question close enough to the one asked."""

    entry_id: int
    value: Any = Field(description="The cached value, as it was put (decoded JSON).")
    run_id: str | None = Field(description="The run that produced the cached answer.")
    question: str = Field(description="The cached question (not necessarily the one asked).")
    similarity: float = Field(description="Cosine similarity of the two questions' embeddings.")
    scope: str = Field(description="The scope key (SHA-256 of the canonical scope JSON).")
    created: float
    hits: int = Field(description="Times this entry was served, this hit included.")


class CacheStats(BaseModel):
    path: str
    entries: int
    scopes: int
    max_entries: int
    threshold: float
    hits: int = Field(description="Hits served by this instance.")
    misses: int = Field(description="Misses of this instance.")
    puts: int
    evictions: int = Field(description="Entries this instance evicted (LRU).")
    guard_rejections: int = Field(0, description="Candidates above the threshold this instance skipped because "
                                  "the questions conflict (lexical guard).")
    loaded_scopes: int = Field(description="Scopes whose vectors this instance holds in memory.")


def scope_key(scope: Mapping[str, Any]) -> str:
    """SHA-256 of ``scope`` as canonical JSON (sorted keys, compact separators, UTF-8)."""
    return hashlib.sha256(_canonical(scope).encode("utf-8")).hexdigest()


def _canonical(scope: Mapping[str, Any]) -> str:
    if not isinstance(scope, Mapping):
        raise TypeError("scope must be a mapping (dict) of JSON values")
    try:
        return json.dumps(dict(scope), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"scope must hold JSON values only: {exc}") from exc


# ---------------------------------------------------------------------------- lexical guard

_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9\-]*(?:'[a-z]+)?|\d+(?:[.,:]\d+)*")


def _split(words: str) -> list[str]:
    return words.split()


_NEGATIONS = frozenset(_split("not no never none nobody nothing neither nor without cannot can't don't doesn't didn't "
                              "isn't aren't wasn't weren't won't absence absent lack lacking"))


def _classes() -> list[dict[str, str]]:
    """Exclusive word classes: word -> value. Two questions using different values of one class differ."""
    groups = [
        {"up": "increase increased increasing raise raised raising rise rising higher high greater more improve "
               "improved improving enhance enhanced promote promoted activate activated upregulate upregulated gain "
               "stronger better accelerate accelerated",
         "down": "decrease decreased decreasing reduce reduced reducing lower low less fewer impair impaired worsen "
                 "worsened inhibit inhibited suppress suppressed downregulate downregulated loss weaker worse "
                 "decline declined slow slowed"},
        {"min": "minimum min least smallest shortest lowest", "max": "maximum max most largest longest highest"},
        {"start": "start starting begin beginning first", "end": "end ending finish last"},
        {"before": "before prior earlier", "after": "after later"},
        {"on": "enable enabled activate", "off": "disable disabled deactivate"},
        {"in": "import", "out": "export"}, {"up": "upgrade", "down": "downgrade"},
        {"add": "add create", "remove": "remove delete"},
        {"over": "over above exceeding", "under": "under below"},
        {"male": "male men man boy", "female": "female women woman girl"},
        {w: w for w in _split("who when where why")},
        {d: d for d in _split("monday tuesday wednesday thursday friday saturday sunday")},
        {m: m for m in _split("january february march april june july august september october november december")},
        {"second": "second", "minute": "minute", "hour": "hour hourly", "day": "daily day", "week": "weekly week",
         "month": "monthly month", "quarter": "quarterly quarter", "year": "annual annually yearly year"},
    ]
    out = []
    for g in groups:
        table: dict[str, str] = {}
        for value, words in g.items():
            for w in words.split():
                table[w] = value
        out.append(table)
    return out


_CLASSES = _classes()


def _words(text: str) -> list[str]:
    out = []
    for w in _TOKEN.findall(text):
        w = w.lower()
        w = w.removesuffix("'s")
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss") and not w.isdigit():
            w = w[:-1]
        out.append(w)
    return out


def _entities(text: str) -> set[str]:
    """Capitalised words after the first, and words with digits or inner capitals (PostgreSQL, IME1, PD-1)."""
    toks = _TOKEN.findall(text)
    out = set()
    for n, t in enumerate(toks):
        if t[0].isdigit():
            continue
        if t == "I":
            continue
        if (n > 0 and t[0].isupper()) or any(c.isdigit() for c in t) or any(c.isupper() for c in t[1:]):
            out.add(_words(t)[0])
    return out


def conflict(asked: str, cached: str) -> str | None:
    """Why the questions ``asked`` and ``cached`` must not share an answer, or None (see the module docstring)."""
    wa, wc = _words(asked), _words(cached)
    sa, sc = set(wa), set(wc)
    na = {w for w in wa if w[0].isdigit()}
    nc = {w for w in wc if w[0].isdigit()}
    if na != nc:
        return f"numbers differ: {sorted(na)} / {sorted(nc)}"
    if bool(sa & _NEGATIONS) != bool(sc & _NEGATIONS) or \
            bool({w for w in sa if w.endswith("n't")}) != bool({w for w in sc if w.endswith("n't")}):
        return "a negation on one side only"
    for table in _CLASSES:
        va = {table[w] for w in sa if w in table}
        vc = {table[w] for w in sc if w in table}
        if va and vc and va != vc:
            return f"{'/'.join(sorted(va))} vs {'/'.join(sorted(vc))}"
    ea, ec = _entities(asked) - sc, _entities(cached) - sa
    if ea and ec:
        return f"different names: {sorted(ea)} / {sorted(ec)}"
    return None


class _Matrix:
    """The entries of one scope in memory: ids, questions and a (n, dim) float32 matrix of unit vectors."""

    __slots__ = ("ids", "mat", "questions")

    def __init__(self, ids: npt.NDArray[np.int64], mat: npt.NDArray[np.float32], questions: list[str]) -> None:
        self.ids, self.mat, self.questions = ids, mat, questions

    def add(self, entry_id: int, vec: npt.NDArray[np.float32], question: str) -> None:
        self.ids = np.append(self.ids, np.int64(entry_id))
        self.mat = np.vstack([self.mat, vec[None, :]]) if len(self.mat) else vec[None, :].copy()
        self.questions.append(question)

    def remove(self, gone: set[int]) -> None:
        keep = ~np.isin(self.ids, np.fromiter(gone, dtype=np.int64, count=len(gone)))
        self.ids, self.mat = self.ids[keep], self.mat[keep]
        self.questions = [q for q, k in zip(self.questions, keep, strict=True) if k]


class SemanticCache:
    """A persistent, size-bounded semantic cache of answers (see the module docstring).

    ``path``: the SQLite file (created with its folder). ``max_entries``: the LRU bound. ``threshold``: the
    least cosine similarity between the asked and a cached question for a hit. ``dim``: the vector size
    (384 for the suite's embedder). ``guard``: apply the lexical guard when ``lookup`` is given the question text;
    ``max_candidates``: how many candidates above the threshold a lookup tries. ``touch_flush_s``: a hit's LRU
    time and hit count are written in batches (by every put, and by a hit when 64 are pending or ``touch_flush_s``
    has passed), so most lookups only read; another process's eviction may not see the last seconds' hits. Thread-safe within a process; several processes may share ``path``."""

    def __init__(self, path: str | Path, *, max_entries: int = 10_000, threshold: float = 0.92,
                 dim: int = 384, guard: bool = True, max_candidates: int = 5, touch_flush_s: float = 10.0,
                 timeout_s: float = 5.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries, self.threshold, self.dim = max_entries, float(threshold), int(dim)
        self.guard, self.max_candidates = guard, max(1, int(max_candidates))
        self.touch_flush_s = float(touch_flush_s)
        self._pending: dict[int, tuple[float, int]] = {}  # entry id -> (last hit time, hits) not yet written
        self._flushed = time.monotonic()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._tx():
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(stmt)
            row = self._db.execute("SELECT value FROM meta WHERE key='dim'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta(key, value) VALUES ('dim', ?), ('version', ?)",
                                 (str(self.dim), CACHE_VERSION))
            elif int(row[0]) != self.dim:
                raise ValueError(f"{self.path} holds {row[0]}-d vectors, not {self.dim}-d")
        self._mats: dict[str, _Matrix] = {}
        self._data_version = self._version()
        self._hits = self._misses = self._puts = self._evictions = self._guarded = 0

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            try:
                if self._pending:
                    with self._tx():
                        self._flush_touches()
            finally:
                self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SemanticCache({str(self.path)!r}, max_entries={self.max_entries}, threshold={self.threshold})"

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One short write transaction (taken at once: BEGIN IMMEDIATE waits up to the busy timeout)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _sync(self) -> None:
        """Drop the in-memory matrices when another connection has committed since we last looked."""
        v = self._version()
        if v != self._data_version:
            self._mats.clear()
            self._data_version = v

    def _unit(self, vector: Any) -> npt.NDArray[np.float32]:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.dim:
            raise CacheRefused(f"the vector has {v.shape[0]} dimensions; this cache holds {self.dim}")
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise CacheRefused("the vector is zero or not finite")
        return v / norm

    def _matrix(self, key: str) -> _Matrix:
        m = self._mats.get(key)
        if m is None:
            rows = self._db.execute("SELECT id, vector, question FROM entries WHERE scope=? ORDER BY id",
                                    (key,)).fetchall()
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            mat = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim).copy()
                   if rows else np.zeros((0, self.dim), dtype=np.float32))
            m = self._mats[key] = _Matrix(ids, mat, [r[2] for r in rows])
        return m

    # ------------------------------------------------------------------ API

    def lookup(self, vector: Any, scope: Mapping[str, Any], *, question: str | None = None) -> CacheHit | None:
        """The cached answer of the most similar question in ``scope`` if its similarity is >= ``threshold``.

        ``vector`` is the asked question's embedding (normalised here). With ``question`` (the asked text) and
        the guard on, candidates that :func:`conflict` with it are skipped (up to ``max_candidates`` tried, best
        first). A hit refreshes the entry's LRU time."""
        v = self._unit(vector)
        key = scope_key(scope)
        with self._lock:
            self._sync()
            tried: set[int] = set()
            for _ in range(self.max_candidates + 3):  # + a few for entries evicted by another process meanwhile
                m = self._matrix(key)
                if not len(m.ids):
                    break
                sims = m.mat @ v
                if tried:
                    sims = np.where(np.isin(m.ids, list(tried)), -2.0, sims)
                j = int(np.argmax(sims))
                sim = float(sims[j])
                if sim < self.threshold or len(tried) >= self.max_candidates:
                    break
                entry_id = int(m.ids[j])
                tried.add(entry_id)
                if question is not None and self.guard and conflict(question, m.questions[j]):
                    self._guarded += 1
                    continue
                row = self._db.execute("SELECT value, run_id, question, created, hits FROM entries WHERE id=?",
                                       (entry_id,)).fetchone()
                if row is None:
                    m.remove({entry_id})
                    continue
                _, pending = self._pending.get(entry_id, (0.0, 0))
                self._pending[entry_id] = (time.time(), pending + 1)
                if len(self._pending) >= 64 or time.monotonic() - self._flushed >= self.touch_flush_s:
                    with self._tx():
                        self._flush_touches()
                self._hits += 1
                return CacheHit(entry_id=entry_id, value=json.loads(row[0]), run_id=row[1], question=row[2],
                                similarity=round(min(1.0, sim), 6), scope=key, created=row[3],
                                hits=row[4] + pending + 1)
            self._misses += 1
            return None

    def _flush_touches(self) -> None:
        """Write the pending LRU touches of hits (inside a transaction the caller holds)."""
        if self._pending:
            self._db.executemany("UPDATE entries SET last_used=MAX(last_used, ?), hits=hits+? WHERE id=?",
                                 [(t, n, i) for i, (t, n) in self._pending.items()])
            self._pending.clear()
        self._flushed = time.monotonic()

    def flush(self) -> None:
        """Write the pending LRU touches now (also done by :meth:`put`, :meth:`stats`, :meth:`close` and, in
        batches, by :meth:`lookup`)."""
        with self._lock, self._tx():
            self._flush_touches()

    def put(self, vector: Any, scope: Mapping[str, Any], question: str, run_id: str | None, value: Any, *,
            passed: bool) -> int:
        """Store ``value`` (JSON-serialisable) as the answer to ``question`` in ``scope``; returns the entry id.

        ``passed`` must be True: the caller states that the answer's guard and judge passed; ``False`` raises
        :class:`CacheRefused` (so does a value that is a dict with ``"passed": false``). An entry of the same
        scope with the same question text, or a vector at cosine >= 0.999, is replaced. Evicts the least recently
        used entries beyond ``max_entries``."""
        if passed is not True:
            raise CacheRefused("only answers whose guard and judge passed may be cached")
        if isinstance(value, Mapping) and value.get("passed") is False:
            raise CacheRefused("the value is flagged passed=false; only passing answers may be cached")
        v = self._unit(vector)
        try:
            body = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CacheRefused(f"the value is not JSON-serialisable: {exc}") from exc
        key, canon = scope_key(scope), _canonical(scope)
        now = time.time()
        with self._lock:
            self._sync()
            m = self._matrix(key)
            replace = set()
            if len(m.ids):
                sims = m.mat @ v
                replace = {int(i) for i in m.ids[sims >= 0.999]}
            with self._tx():
                self._flush_touches()
                replace |= {r[0] for r in self._db.execute("SELECT id FROM entries WHERE scope=? AND question=?",
                                                           (key, question))}
                if replace:
                    self._db.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(replace))})",
                                     tuple(replace))
                self._db.execute("INSERT OR IGNORE INTO scopes(scope, body) VALUES (?, ?)", (key, canon))
                entry_id = int(self._db.execute(
                    "INSERT INTO entries(scope, question, vector, run_id, value, created, last_used) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, question, v.astype(np.float32).tobytes(), run_id, body, now, now)).lastrowid)
                total = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                evicted: list[tuple[int, str]] = []
                if total > self.max_entries:
                    evicted = self._db.execute(
                        "SELECT id, scope FROM entries WHERE id != ? ORDER BY last_used, id LIMIT ?",
                        (entry_id, total - self.max_entries)).fetchall()
                    self._db.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(evicted))})",
                                     tuple(e[0] for e in evicted))
                    gone_scopes = {e[1] for e in evicted}
                    self._db.execute(f"DELETE FROM scopes WHERE scope IN ({','.join('?' * len(gone_scopes))}) AND NOT "
                                     "EXISTS (SELECT 1 FROM entries WHERE entries.scope = scopes.scope)",
                                     tuple(gone_scopes))
            if replace:
                m.remove(replace)
            m.add(entry_id, v, question)
            by_scope: dict[str, set[int]] = {}
            for eid, sc in evicted:
                by_scope.setdefault(sc, set()).add(eid)
            for sc, gone in by_scope.items():
                if sc in self._mats:
                    self._mats[sc].remove(gone)
            self._puts += 1
            self._evictions += len(evicted)
            return entry_id

    def invalidate(self, scope: Mapping[str, Any] | None = None) -> int:
        """Remove entries; returns how many. ``None``: all. A dict: every entry whose scope *contains* it (each of
        its keys with an equal value), e.g. ``{"collection": "docs"}`` drops that collection's entries whatever
        their index or policy versions; the full scope dict drops exactly that scope."""
        with self._lock:
            with self._tx():
                if scope is None:
                    n = self._db.execute("DELETE FROM entries").rowcount
                    self._db.execute("DELETE FROM scopes")
                    keys = None
                else:
                    want = json.loads(_canonical(scope))
                    keys = [k for k, body in self._db.execute("SELECT scope, body FROM scopes")
                            if all(k2 in (b := json.loads(body)) and b[k2] == v2 for k2, v2 in want.items())]
                    n = 0
                    for k in keys:
                        n += self._db.execute("DELETE FROM entries WHERE scope=?", (k,)).rowcount
                        self._db.execute("DELETE FROM scopes WHERE scope=?", (k,))
            if keys is None:
                self._mats.clear()
            else:
                for k in keys:
                    self._mats.pop(k, None)
            return int(n)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def stats(self) -> CacheStats:
        with self._lock:
            if self._pending:
                self.flush()
            entries, scopes = self._db.execute("SELECT COUNT(*), COUNT(DISTINCT scope) FROM entries").fetchone()
            return CacheStats(path=str(self.path), entries=entries, scopes=scopes, max_entries=self.max_entries,
                              threshold=self.threshold, hits=self._hits, misses=self._misses, puts=self._puts,
                              evictions=self._evictions, guard_rejections=self._guarded,
                              loaded_scopes=len(self._mats))
