"""Operational metrics of the orchestrator, computed from the run store: what ``guardrag stats`` prints.

Latency percentiles per step and per tool, error rates, tokens per second, cost per model and per day, the
cache hit rate and how runs ended. Everything comes from rows the pipeline already writes (steps with their
timings and tool calls, usage, runs), so the numbers cover every process that shared the store.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict

from pydantic import BaseModel, Field

from client.state import RunStore

__all__ = ["Latency", "Stats", "compute_stats"]


class Latency(BaseModel):
    count: int
    errors: int = 0
    error_rate: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


class Stats(BaseModel):
    since: float | None = Field(None, description="Epoch seconds the window starts at (None: all time).")
    runs: int
    statuses: dict[str, int]
    steps: dict[str, Latency]
    tools: dict[str, Latency] = Field(description="server/tool -> latency of the calls the pipeline made.")
    runs_e2e: Latency = Field(description="Wall-clock time of finished runs (first step start to last step end).")
    tokens: int
    tokens_per_s: float | None = Field(None, description="Tokens counted per second of step time.")
    cost: float
    cost_by_model: dict[str, float]
    cost_by_day: dict[str, float]
    unpriced_calls: int = 0
    cache_lookups: int = 0
    cache_hits: int = 0
    cache_hit_rate: float | None = None
    approvals: dict[str, int] = Field(default_factory=dict)


def _pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 3)


def _latency(values: list[float], errors: int = 0) -> Latency:
    n = len(values) + errors
    return Latency(count=n, errors=errors, error_rate=round(errors / n, 4) if n else 0.0,
                   p50_ms=_pct(values, 50), p95_ms=_pct(values, 95), p99_ms=_pct(values, 99))


def compute_stats(store: RunStore, *, since: float | None = None) -> Stats:
    """Metrics over the runs created since ``since`` (epoch seconds; None: all)."""
    read = store._read  # the store's locked reads: its audit thread shares the connection
    since_v = since if since is not None else 0.0
    runs = read("SELECT id, status, result FROM runs WHERE created_at >= ?", (since_v,))
    statuses: dict[str, int] = defaultdict(int)
    cache_hits = cache_lookups = 0
    approvals: dict[str, int] = defaultdict(int)
    for r in runs:
        statuses[r["status"]] += 1
        result = json.loads(r["result"]) if r["result"] else {}
        answer = (result or {}).get("answer") or {}
        if answer.get("cached"):
            cache_hits += 1
        appr = (result or {}).get("approval") or {}
        if appr.get("required"):
            approvals[appr.get("decision") or "awaiting"] += 1
    rows = read(
        "SELECT s.run_id, s.name, s.status, s.duration_ms, s.tokens, s.timings, s.started_at, s.ended_at "
        "FROM steps s JOIN runs r ON r.id = s.run_id WHERE r.created_at >= ?", (since_v,))
    step_ms: dict[str, list[float]] = defaultdict(list)
    step_err: dict[str, int] = defaultdict(int)
    tool_ms: dict[str, list[float]] = defaultdict(list)
    tool_err: dict[str, int] = defaultdict(int)
    spans: dict[str, list[float]] = {}
    tokens, busy_ms = 0, 0.0
    for s in rows:
        if s["status"] == "failed":
            step_err[s["name"]] += 1
        elif s["status"] == "done" and s["duration_ms"] is not None:
            step_ms[s["name"]].append(s["duration_ms"])
            busy_ms += s["duration_ms"]
        tokens += s["tokens"] or 0
        timings = json.loads(s["timings"]) if s["timings"] else {}
        for t in timings.get("tools", []):
            key = f"{t.get('server')}/{t.get('tool')}"
            if t.get("ok"):
                tool_ms[key].append(float(t.get("ms", 0.0)))
            else:
                tool_err[key] += 1
        if s["name"] == "cache" and s["status"] == "done":
            cache_lookups += 1
        if s["started_at"] is not None and s["ended_at"] is not None:
            lo, hi = spans.get(s["run_id"], [s["started_at"], s["ended_at"]])
            spans[s["run_id"]] = [min(lo, s["started_at"]), max(hi, s["ended_at"])]
    finished = {r["id"] for r in runs if r["status"] in ("done", "tripped", "rejected", "awaiting_approval")}
    e2e = [(hi - lo) * 1000 for rid, (lo, hi) in spans.items() if rid in finished]
    usage = read("SELECT model, cost, priced, at FROM usage u JOIN runs r ON r.id = u.run_id "
                 "WHERE r.created_at >= ?", (since_v,))
    by_model: dict[str, float] = defaultdict(float)
    by_day: dict[str, float] = defaultdict(float)
    unpriced = 0
    for u in usage:
        by_model[u["model"]] += u["cost"]
        by_day[time.strftime("%Y-%m-%d", time.gmtime(u["at"]))] += u["cost"]
        unpriced += 0 if u["priced"] else 1
    return Stats(
        since=since, runs=len(runs), statuses=dict(statuses),
        steps={n: _latency(step_ms.get(n, []), step_err.get(n, 0)) for n in sorted(set(step_ms) | set(step_err))},
        tools={k: _latency(tool_ms.get(k, []), tool_err.get(k, 0)) for k in sorted(set(tool_ms) | set(tool_err))},
        runs_e2e=_latency(e2e), tokens=tokens,
        tokens_per_s=round(tokens / (busy_ms / 1000), 1) if busy_ms > 0 else None,
        cost=round(sum(by_model.values()), 8), cost_by_model={k: round(v, 8) for k, v in by_model.items()},
        cost_by_day={k: round(v, 8) for k, v in sorted(by_day.items())}, unpriced_calls=unpriced,
        cache_lookups=cache_lookups, cache_hits=cache_hits,
        cache_hit_rate=round(cache_hits / cache_lookups, 4) if cache_lookups else None, approvals=dict(approvals))
