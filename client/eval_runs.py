"""Continuous evaluation: ``guardrag eval QUESTIONS.jsonl`` runs the pipeline over a question set, judges every
answer, writes JSON and HTML reports, and fails (exit 1) when a metric falls below the thresholds kept in a TOML
file under version control, so it can gate CI.

Question file: one JSON object per line, ``{"question": str, "collection"?: str, "expected_sources"?: [str],
"id"?: str}``. ``expected_sources`` are sources an answer should cite: a cited source matches when it equals
one, ends with ``/`` + it (a file name), or starts with it (a folder).

Thresholds file (TOML)::

    [min]                      # the metric must be at least this
    judge_pass_rate = 0.6
    mean_faithfulness = 0.8
    [max]                      # the metric must be at most this
    e2e_p95_ms = 30000

A threshold naming a metric the report does not have is an error (a typo must not pass silently).
"""

from __future__ import annotations

import html
import json
import math
import statistics
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from core.errors import InvalidInput

__all__ = ["EvalQuestion", "EvalReport", "Thresholds", "check", "load_questions", "load_thresholds", "render_html",
           "run_eval"]


class EvalQuestion(BaseModel):
    question: str = Field(min_length=1, max_length=10_000)
    collection: str | None = None
    expected_sources: list[str] = Field(default_factory=list)
    id: str | None = None


class QuestionResult(BaseModel):
    id: str
    question: str
    run_id: str
    status: str
    answered: bool
    faithfulness: float | None = None
    relevance: float | None = None
    passed: bool | None = None
    cited: list[str] = Field(default_factory=list)
    source_hit: bool | None = None
    e2e_ms: float
    steps_ms: dict[str, float] = Field(default_factory=dict)
    tokens: int = 0
    cost: float = 0.0
    answer_backend: str | None = None


class Verdict(BaseModel):
    metric: str
    bound: str
    threshold: float
    value: float | None
    ok: bool


class EvalReport(BaseModel):
    file: str
    n: int
    metrics: dict[str, float | None]
    statuses: dict[str, int]
    steps: dict[str, dict[str, float | None]]
    results: list[QuestionResult]
    verdicts: list[Verdict] = Field(default_factory=list)
    passed: bool = True
    created_at: float = Field(default_factory=time.time)


class Thresholds(BaseModel):
    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)


def load_questions(path: Path) -> list[EvalQuestion]:
    """The question set; a bad line is an :class:`InvalidInput` naming the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            q = EvalQuestion.model_validate_json(line)
        except ValidationError as exc:
            raise InvalidInput(f"{path} line {n}: {exc.errors()[0]['msg']} ({exc.errors()[0]['loc']})") from None
        out.append(q.model_copy(update={"id": q.id or f"q{n}"}))
    if not out:
        raise InvalidInput(f"{path} holds no question")
    return out


def load_thresholds(path: Path) -> Thresholds:
    try:
        return Thresholds.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise InvalidInput(f"cannot read thresholds {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise InvalidInput(f"thresholds {path}: {exc}") from None


def _pct(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 1)


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.mean(values), 4) if values else None


def _cites(cited: list[str], expected: list[str]) -> bool:
    """An expected source matches a cited one exactly, as its file name (``a.md`` for ``docs/a.md``) or as a
    prefix (a folder)."""
    return any(c == e or c.endswith("/" + e) or c.startswith(e) for c in cited for e in expected)


async def run_eval(questions: Sequence[EvalQuestion], pipeline: Any, *, file: str = "",
                   progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Ask every question through ``pipeline`` (a :class:`client.pipeline.Pipeline`) and measure the answers."""
    results: list[QuestionResult] = []
    for n, q in enumerate(questions, start=1):
        started = time.perf_counter()
        res = await pipeline.ask(q.question, collection=q.collection)
        e2e = (time.perf_counter() - started) * 1000
        run = pipeline.store.get_run(res.run_id, steps=True)
        held = (run.result or {}).get("held_answer")  # an answer awaiting approval is still judged
        answer = res.answer if not held else type(res.answer).model_validate(held)
        cited = sorted({c.source for c in answer.citations}) if answer is not None else []
        steps: dict[str, float] = defaultdict(float)
        for st in run.steps:
            steps[st.name] += st.duration_ms or 0.0
        judge = res.judge
        results.append(QuestionResult(
            id=q.id or f"q{n}", question=q.question, run_id=res.run_id, status=res.status,
            answered=answer is not None and answer.error is None and bool(answer.text),
            faithfulness=judge.faithfulness if judge and not judge.skipped else None,
            relevance=judge.relevance if judge and not judge.skipped else None,
            passed=judge.passed if judge and not judge.skipped else None, cited=cited,
            source_hit=_cites(cited, q.expected_sources) if q.expected_sources else None,
            e2e_ms=round(e2e, 1), steps_ms=dict(steps), tokens=res.tokens, cost=res.cost,
            answer_backend=answer.backend if answer is not None else None))
        if progress:
            progress(n, len(questions))
    return summarize(results, file=file)


def summarize(results: list[QuestionResult], *, file: str = "") -> EvalReport:
    n = len(results)
    faith = [r.faithfulness for r in results if r.faithfulness is not None]
    rel = [r.relevance for r in results if r.relevance is not None]
    hits = [r.source_hit for r in results if r.source_hit is not None]
    e2e = [r.e2e_ms for r in results]
    per_step: dict[str, list[float]] = defaultdict(list)
    for r in results:
        for name, ms in r.steps_ms.items():
            per_step[name].append(ms)
    statuses: dict[str, int] = defaultdict(int)
    for r in results:
        statuses[r.status] += 1
    metrics: dict[str, float | None] = {
        "questions": float(n),
        "answered_rate": round(sum(r.answered for r in results) / n, 4) if n else None,
        "judge_pass_rate": round(sum(bool(r.passed) for r in results) / n, 4) if n else None,
        "mean_faithfulness": _mean(faith), "mean_relevance": _mean(rel),
        "source_hit_rate": round(sum(hits) / len(hits), 4) if hits else None,
        "error_rate": round(sum(r.status in ("failed", "tripped") for r in results) / n, 4) if n else None,
        "e2e_p50_ms": _pct(e2e, 50), "e2e_p95_ms": _pct(e2e, 95),
        "cost_total": round(sum(r.cost for r in results), 8), "tokens_mean": _mean([float(r.tokens) for r in results]),
    }
    steps = {name: {"p50_ms": _pct(v, 50), "p95_ms": _pct(v, 95)} for name, v in per_step.items()}
    return EvalReport(file=file, n=n, metrics=metrics, statuses=dict(statuses), steps=steps, results=results)


def check(report: EvalReport, thresholds: Thresholds) -> EvalReport:
    """Compare the metrics to the thresholds; ``passed`` is False when any is violated (or missing)."""
    verdicts = []
    for bound, table in (("min", thresholds.min), ("max", thresholds.max)):
        for metric, limit in table.items():
            if metric not in report.metrics:
                raise InvalidInput(f"threshold [{bound}] {metric}: no such metric; known: "
                                   f"{', '.join(sorted(report.metrics))}")
            value = report.metrics[metric]
            ok = value is not None and (value >= limit if bound == "min" else value <= limit)
            verdicts.append(Verdict(metric=metric, bound=bound, threshold=limit, value=value, ok=ok))
    return report.model_copy(update={"verdicts": verdicts, "passed": all(v.ok for v in verdicts)})


# ------------------------------------------------------------------------------------------------ HTML


def _hist_svg(values: Sequence[float], title: str, *, lo: float = 0.0, hi: float = 1.0, bins: int = 10,
              width: int = 360, height: int = 160) -> str:
    """A histogram as inline SVG."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
    top = max(counts) or 1
    bw = (width - 40) / bins
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}" role="img" '
             f'aria-label="{html.escape(title)}"><text x="4" y="12" font-size="12">{html.escape(title)}</text>')]
    for i, c in enumerate(counts):
        h = (height - 30) * c / top
        x = 30 + i * bw
        parts.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="#7aa6d8">'
                     f'<title>{c}</title></rect>')
    for t in (lo, (lo + hi) / 2, hi):
        x = 30 + (t - lo) / (hi - lo) * (width - 40)
        parts.append(f'<text x="{x:.1f}" y="{height + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _bars_svg(rows: dict[str, float], title: str, unit: str = "ms", width: int = 420) -> str:
    """Horizontal bars (one per key) as inline SVG."""
    top = max(rows.values(), default=0) or 1
    height = 24 + 18 * len(rows)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}"><text x="4" y="12" font-size="12">{html.escape(title)}</text>')]
    for i, (name, v) in enumerate(rows.items()):
        y = 20 + 18 * i
        w = (width - 190) * v / top
        parts.append(f'<text x="4" y="{y + 11}" font-size="11">{html.escape(name)}</text>'
                     f'<rect x="90" y="{y}" width="{w:.1f}" height="13" fill="#9cc59a"/>'
                     f'<text x="{94 + w:.1f}" y="{y + 11}" font-size="10">{v:.0f} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: EvalReport) -> str:
    """A self-contained HTML report: metrics against thresholds, score distributions, per-step latency, cost."""
    e = html.escape

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    verdicts = {(v.metric): v for v in report.verdicts}
    metric_rows = "".join(
        f"<tr><td>{e(k)}</td><td>{f(v)}</td><td>{e(verdicts[k].bound + ' ' + format(verdicts[k].threshold, 'g')) if k in verdicts else ''}</td>"
        f"<td>{'' if k not in verdicts else ('ok' if verdicts[k].ok else '<b>FAIL</b>')}</td></tr>"
        for k, v in report.metrics.items())
    rows = "".join(
        f"<tr><td>{e(r.id)}</td><td>{e(r.question[:90])}</td><td>{e(r.status)}</td><td>{f(r.faithfulness)}</td>"
        f"<td>{f(r.relevance)}</td><td>{'' if r.source_hit is None else ('yes' if r.source_hit else 'no')}</td>"
        f"<td>{r.e2e_ms:.0f}</td><td>{r.cost:.6f}</td><td>{e(r.run_id)}</td></tr>" for r in report.results)
    faith = [r.faithfulness for r in report.results if r.faithfulness is not None]
    rel = [r.relevance for r in report.results if r.relevance is not None]
    step_p50 = {k: v["p50_ms"] or 0.0 for k, v in report.steps.items()}
    state = "PASSED" if report.passed else "FAILED"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>guardrag evaluation: {state}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em}}figure{{display:inline-block;margin:0 1em 1em 0}}</style>
</head><body>
<h1>guardrag evaluation: {state}</h1>
<p>File <code>{e(report.file)}</code>, {report.n} questions; statuses {e(json.dumps(report.statuses))}.</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>threshold</th><th></th></tr>{metric_rows}</table>
<h2>Distributions</h2>
<figure>{_hist_svg(faith, "faithfulness")}</figure><figure>{_hist_svg(rel, "relevance")}</figure>
<figure>{_bars_svg(step_p50, "p50 latency per step")}</figure>
<h2>Questions</h2>
<table><tr><th>id</th><th>question</th><th>status</th><th>faithfulness</th><th>relevance</th><th>cites expected</th>
<th>ms</th><th>cost</th><th>run</th></tr>{rows}</table>
</body></html>
"""
