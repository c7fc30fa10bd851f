"""``guardrag judge eval FILE.jsonl``: evaluate the judge server on a labelled set, over MCP only.

The file has the format of ``../shared/data/judge`` (one JSON object a line: ``answer``, ``context`` (a string or
a list of strings), ``label`` "faithful" / "hallucinated" or ``hallucinated`` 0/1, optional ``question``,
``source``, ``id``). The judge server is started over stdio (``client/connect.py``) and ``judge_faithfulness`` is
called once per record; a record is predicted hallucinated when the verdict is "unfaithful".

Prints accuracy, balanced accuracy and the confusion matrix (overall and per source) and a calibration table
(faithfulness score bins: count, mean score, observed faithful share); ``--html`` writes a self-contained report
with a reliability plot drawn as inline SVG; ``--json`` writes the numbers.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field

from core.errors import InvalidInput

__all__ = ["Confusion", "EvalReport", "JudgeRecord", "balanced_accuracy", "calibration_bins", "confusion",
           "evaluate", "judge_app", "load_records", "render_html"]


class JudgeRecord(BaseModel):
    id: str
    source: str = "all"
    question: str | None = None
    answer: str
    contexts: list[str]
    hallucinated: int = Field(ge=0, le=1)


class Confusion(BaseModel):
    """Positive = hallucinated (what the judge must catch)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float | None:
        return (self.tp + self.tn) / self.n if self.n else None

    @property
    def balanced_accuracy(self) -> float | None:
        rates = [r for r in (self.tp / (self.tp + self.fn) if self.tp + self.fn else None,
                             self.tn / (self.tn + self.fp) if self.tn + self.fp else None) if r is not None]
        return sum(rates) / len(rates) if rates else None


class CalibrationBin(BaseModel):
    low: float
    high: float
    count: int
    mean_score: float | None
    faithful_share: float | None


class SourceMetrics(BaseModel):
    source: str
    n: int
    accuracy: float | None
    balanced_accuracy: float | None
    confusion: Confusion


class EvalReport(BaseModel):
    file: str
    n: int
    overall: SourceMetrics
    by_source: list[SourceMetrics]
    calibration: list[CalibrationBin]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    backends: dict[str, int] = Field(description="How many records each backend judged.")
    rubric: str | None = None
    predictions: list[dict[str, Any]] = Field(default_factory=list, description="id, source, label, score, verdict.")


def confusion(labels: Sequence[int], predicted: Sequence[int]) -> Confusion:
    """Confusion counts with hallucinated (1) as the positive class."""
    c = Confusion()
    for y, p in zip(labels, predicted):
        if y and p:
            c.tp += 1
        elif y:
            c.fn += 1
        elif p:
            c.fp += 1
        else:
            c.tn += 1
    return c


def balanced_accuracy(labels: Sequence[int], predicted: Sequence[int]) -> float:
    """Mean of the true-positive and true-negative rates (0.0 for no data: never NaN)."""
    return confusion(labels, predicted).balanced_accuracy or 0.0


def calibration_bins(scores: Sequence[float], faithful: Sequence[int], bins: int = 5) -> list[CalibrationBin]:
    """Equal-width bins of the faithfulness score: how often answers in each bin are really faithful."""
    out = []
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        idx = [i for i, s in enumerate(scores) if low <= s < high or (b == bins - 1 and s == 1.0)]
        out.append(CalibrationBin(
            low=low, high=high, count=len(idx),
            mean_score=sum(scores[i] for i in idx) / len(idx) if idx else None,
            faithful_share=sum(faithful[i] for i in idx) / len(idx) if idx else None))
    return out


def load_records(path: Path) -> list[JudgeRecord]:
    """Read and validate the JSONL file; any problem is an :class:`InvalidInput` naming the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            label = raw.get("hallucinated")
            if label is None:
                label = {"faithful": 0, "hallucinated": 1}.get(raw.get("label"))
            if label is None:
                raise ValueError('needs "hallucinated" (0/1) or "label" ("faithful"/"hallucinated")')
            context = raw.get("contexts", raw.get("context"))
            contexts = [context] if isinstance(context, str) else context
            if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
                raise ValueError('"context" must be a string (or "contexts" a list of strings)')
            if not isinstance(raw.get("answer"), str):
                raise ValueError('"answer" must be a string')
            records.append(JudgeRecord(id=str(raw.get("id", f"line-{n}")), source=str(raw.get("source") or "all"),
                                       question=raw.get("question"), answer=raw["answer"], contexts=contexts,
                                       hallucinated=int(label)))
        except (ValueError, TypeError) as exc:
            msg = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise InvalidInput(f"{path}, line {n}: {msg}") from None
    if not records:
        raise InvalidInput(f"{path}: no records")
    return records


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _metrics(source: str, rows: list[dict[str, Any]]) -> SourceMetrics:
    c = confusion([r["label"] for r in rows], [r["predicted"] for r in rows])
    return SourceMetrics(source=source, n=len(rows), accuracy=c.accuracy, balanced_accuracy=c.balanced_accuracy,
                         confusion=c)


def build_report(file: str, rows: list[dict[str, Any]], latencies: list[float]) -> EvalReport:
    """Metrics from per-record results (``label``, ``predicted``, ``score``, ``source``, ``backend``)."""
    sources = sorted({r["source"] for r in rows})
    backends: dict[str, int] = {}
    for r in rows:
        backends[r["backend"]] = backends.get(r["backend"], 0) + 1
    return EvalReport(
        file=file, n=len(rows), overall=_metrics("all", rows),
        by_source=[_metrics(s, [r for r in rows if r["source"] == s]) for s in sources],
        calibration=calibration_bins([r["score"] for r in rows], [1 - r["label"] for r in rows]),
        latency_p50_ms=_percentile(latencies, 50), latency_p95_ms=_percentile(latencies, 95), backends=backends,
        rubric=rows[0].get("rubric") if rows else None,
        predictions=[{k: r[k] for k in ("id", "source", "label", "score", "verdict", "backend")} for r in rows])


async def evaluate(records: Sequence[JudgeRecord], *, file: str, env: dict[str, str] | None = None,
                   url: str | None = None, progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Judge every record through the judge server (stdio subprocess, or ``url``) and compute the metrics."""
    from client.connect import call, connect

    rows, latencies = [], []
    async with connect("judge", url=url, env=env) as client:
        for n, rec in enumerate(records, start=1):
            args: dict[str, Any] = {"answer": rec.answer, "contexts": rec.contexts}
            if rec.question:
                args["question"] = rec.question
            started = time.perf_counter()
            res = await call(client, "judge_faithfulness", args)
            latencies.append((time.perf_counter() - started) * 1000)
            rows.append({"id": rec.id, "source": rec.source, "label": rec.hallucinated, "score": res["score"],
                         "verdict": res["verdict"], "predicted": int(res["verdict"] == "unfaithful"),
                         "backend": res["run"]["backend"], "rubric": res["run"]["rubric"]})
            if progress:
                progress(n, len(records))
    return build_report(file, rows, latencies)


# ------------------------------------------------------------------------------------------------ report


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def reliability_svg(bins: Sequence[CalibrationBin], size: int = 320) -> str:
    """A reliability diagram as inline SVG: observed faithful share against the mean score per bin."""
    pad, inner = 40, size - 60
    x = lambda v: pad + v * inner
    y = lambda v: pad // 2 + (1 - v) * inner
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img" '
             f'aria-label="reliability diagram">',
             f'<rect x="{x(0)}" y="{y(1)}" width="{inner}" height="{inner}" fill="none" stroke="#999"/>',
             f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#bbb" stroke-dasharray="4 3"/>']
    for t in (0, 0.5, 1):
        parts.append(f'<text x="{x(t)}" y="{y(0) + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="{x(0) - 6}" y="{y(t) + 3}" font-size="10" text-anchor="end">{t:g}</text>')
    total = max(1, sum(b.count for b in bins))
    for b in bins:
        w = inner * (b.high - b.low)
        if b.count:
            h = inner * 0.25 * b.count / total
            parts.append(f'<rect x="{x(b.low) + 1}" y="{y(0) - h}" width="{w - 2}" height="{h}" fill="#dde6f3">'
                         f'<title>{b.count} answers</title></rect>')
    pts = [(b.mean_score, b.faithful_share) for b in bins if b.count and b.mean_score is not None]
    if pts:
        parts.append('<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="'
                     + " ".join(f"{x(m):.1f},{y(f):.1f}" for m, f in pts) + '"/>')
        for m, f in pts:
            parts.append(f'<circle cx="{x(m):.1f}" cy="{y(f):.1f}" r="3.5" fill="#1f5fbf"/>')
    parts.append(f'<text x="{x(0.5)}" y="{size - 4}" font-size="11" text-anchor="middle">faithfulness score</text>')
    parts.append(f'<text x="10" y="{y(0.5)}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 10 {y(0.5)})">observed faithful share</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: EvalReport) -> str:
    """A self-contained HTML report (no script, no external resource)."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(m.source)}</td><td>{m.n}</td><td>{_f(m.accuracy)}</td><td>{_f(m.balanced_accuracy)}</td>"
        f"<td>{m.confusion.tp}</td><td>{m.confusion.fn}</td><td>{m.confusion.fp}</td><td>{m.confusion.tn}</td></tr>"
        for m in [report.overall, *report.by_source])
    cal = "".join(f"<tr><td>{b.low:.1f}-{b.high:.1f}</td><td>{b.count}</td><td>{_f(b.mean_score)}</td>"
                  f"<td>{_f(b.faithful_share)}</td></tr>" for b in report.calibration)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>guardrag judge evaluation</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style>
</head><body>
<h1>Judge evaluation</h1>
<p>File <code>{e(report.file)}</code>, {report.n} records; rubric <code>{e(report.rubric or '-')}</code>;
backends {e(json.dumps(report.backends))}; latency per call p50 {_f(report.latency_p50_ms, 1)} ms,
p95 {_f(report.latency_p95_ms, 1)} ms (through MCP over stdio). Positive class: hallucinated.</p>
<h2>Accuracy</h2>
<table><tr><th>source</th><th>n</th><th>accuracy</th><th>balanced accuracy</th><th>TP</th><th>FN</th><th>FP</th>
<th>TN</th></tr>{rows}</table>
<h2>Calibration</h2>
<table><tr><th>score bin</th><th>answers</th><th>mean score</th><th>faithful share</th></tr>{cal}</table>
<figure>{reliability_svg(report.calibration)}<figcaption>Reliability: points on the diagonal are calibrated;
bars show how many answers fall in each bin.</figcaption></figure>
</body></html>
"""


# ------------------------------------------------------------------------------------------------ CLI
judge_app = typer.Typer(help="The judge server: evaluate it on a labelled set (over MCP).", no_args_is_help=True)


def tables(report: EvalReport) -> list[Any]:
    """Rich tables: accuracy per source with the confusion matrix, and the calibration table."""
    from rich.table import Table

    acc = Table(title=f"judge_faithfulness on {report.file} ({report.n} records; positive = hallucinated)")
    for col in ("source", "n", "accuracy", "balanced acc.", "TP", "FN", "FP", "TN"):
        acc.add_column(col)
    for m in [*report.by_source, report.overall]:
        acc.add_row(m.source, str(m.n), _f(m.accuracy), _f(m.balanced_accuracy), str(m.confusion.tp),
                    str(m.confusion.fn), str(m.confusion.fp), str(m.confusion.tn))
    acc.caption = (f"rubric {report.rubric}; backends {report.backends}; per call over MCP p50 "
                   f"{_f(report.latency_p50_ms, 1)} ms, p95 {_f(report.latency_p95_ms, 1)} ms")
    cal = Table(title="Calibration (faithfulness score bins)")
    for col in ("score bin", "answers", "mean score", "faithful share"):
        cal.add_column(col)
    for b in report.calibration:
        cal.add_row(f"{b.low:.1f}-{b.high:.1f}", str(b.count), _f(b.mean_score), _f(b.faithful_share))
    return [acc, cal]


@judge_app.command("eval")
def eval_command(
    file: Annotated[Path, typer.Argument(help="JSONL: answer, context (or contexts), label or hallucinated, "
                                              "optional question, source, id.")],
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an HTML report with a reliability plot.",
                                                  dir_okay=False)] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers as JSON.", dir_okay=False)] = None,
    url: Annotated[str | None, typer.Option(help="A running judge server (streamable HTTP); default: start one "
                                                 "over stdio.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records.")] = None,
) -> None:
    """Evaluate judge_faithfulness on a labelled JSONL file: accuracy, balanced accuracy, confusion matrix and a
    calibration table, per source. Talks to the judge server over MCP only."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from client.cli import _load_for_eval, _run, _write_outputs, console, out

    records = _load_for_eval(file, load_records, {"--html": html_out, "--json": json_out})
    records = records[:limit] if limit else records
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"judge {file.name}", total=len(records))

        async def go() -> EvalReport:
            return await evaluate(records, file=str(file), url=url,
                                  progress=lambda done, total: bar.update(task, completed=done))

        report = _run(go)
    for table in tables(report):
        out.print(table)
    _write_outputs({"--html": (html_out, lambda: render_html(report)),
                    "--json": (json_out, lambda: report.model_dump_json(indent=2) + "\n")})
