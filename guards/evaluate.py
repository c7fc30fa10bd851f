"""Evaluate the guards on labelled JSONL sets: the one implementation behind ``bench/guards.py`` and
``guardrag guard eval``. No MCP, no CLI.

Two formats, the ones of the development sets (``../shared/data/*/README.md``), one JSON object a line:

- injection: ``{"id", "text", "label": 0|1, "source", "host_source", "attack_category",
  "injection_span": [start, end] | null, ...}``. A record is predicted positive when the scanner flags
  it. Reported: precision, recall, F1, F2, false-positive rate and balanced accuracy, overall and per
  ``source`` and ``host_source``; recall per ``attack_category`` (categories exist only on positives);
  the span hit rate (an injected record whose ``injection_span`` is overlapped by a finding scoring at
  least the threshold); scan latency.
- PII: ``{"id", "text", "spans": [{"start", "end", "label", "value"}], "source", ...}``. Matching is
  by span overlap: a gold span is found when a finding of the mapped type (:data:`LABELS`) overlaps it;
  a finding is correct when it overlaps a gold span of its type. Findings of types the set does not
  label (secrets, for instance) are left out and counted in ``ignored_predictions``. Reported:
  precision, recall, F1, F2 overall, per label and per source; scan latency.

Latency is wall time of one scanner call, p50/p95 per call and per KB (UTF-8 bytes / 1024, floored at
0.1 KB so a ten-byte text does not read as a huge per-KB cost). One untimed warm-up call comes first.
:func:`compare_injection` / :func:`compare_pii` run several scanners over the same records, interleaved
record by record, so a shared, busy machine slows them alike and latency ratios stay fair.

Undefined ratios (precision with no predicted positive, recall with no positive, ...) are ``None``.
Reading errors are :class:`EvalInputError` naming the file, the line and what is wrong.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import InvalidInput

__all__ = [
    "KEY_TYPES",
    "LABELS",
    "NAIVE_PHRASES",
    "BinaryMetrics",
    "CategoryRecall",
    "EvalInputError",
    "InjectionRecord",
    "InjectionReport",
    "KeywordResult",
    "Latency",
    "PiiRecord",
    "PiiReport",
    "PiiSpan",
    "SpanMetrics",
    "binary_metrics",
    "compare_injection",
    "compare_pii",
    "evaluate_injection",
    "evaluate_pii",
    "fbeta",
    "injection_tables",
    "load_injection",
    "load_pii",
    "naive_keyword_scan",
    "percentile",
    "pii_tables",
    "span_metrics",
]

#: Presidio / guardrag entity type -> the data set's normalised label.
LABELS = {"ADDRESS": "ADDRESS", "PERSON": "PERSON", "LOCATION": "LOCATION", "ORGANIZATION": "ORGANIZATION",
          "CREDIT_CARD": "CREDIT_CARD", "PHONE_NUMBER": "PHONE", "TITLE": "TITLE", "DATE_TIME": "DATE_TIME",
          "NRP": "NRP", "AGE": "AGE", "EMAIL_ADDRESS": "EMAIL", "ZIP_CODE": "ZIP_CODE", "URL": "DOMAIN_NAME",
          "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "SSN", "US_DRIVER_LICENSE": "DRIVER_LICENSE", "IBAN_CODE": "IBAN"}
#: The labels the issue asks recall >= 0.95 on.
KEY_TYPES = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS")

_NONE = "(none)"
_MIN_KB = 0.1


class EvalInputError(InvalidInput):
    """An evaluation file is missing, empty or has a malformed line; the message names file and line."""


# ---------------------------------------------------------------------------------------------- records


class InjectionRecord(BaseModel):
    """One document of an injection set; ``label`` 1 is injected, ``injection_span`` where."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    text: str
    label: Literal[0, 1]
    source: str | None = None
    host_source: str | None = None
    attack_category: str | None = None
    injection_span: tuple[int, int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_pii(cls, data):
        if isinstance(data, dict) and "label" not in data and "spans" in data:
            raise ValueError("this looks like a PII record ('spans', no 'label'); evaluate the file as pii")
        return data

    @model_validator(mode="after")
    def _span_inside(self):
        if self.injection_span is not None:
            start, end = self.injection_span
            if not 0 <= start < end <= len(self.text):
                raise ValueError(f"injection_span [{start}, {end}] is not a non-empty range inside the text "
                                 f"(length {len(self.text)})")
            if self.label == 0:
                raise ValueError("a benign record (label 0) has an injection_span; it should be null")
        return self


class PiiSpan(BaseModel):
    """A gold PII span: ``text[start:end]``, with the set's normalised label."""

    start: int = Field(ge=0)
    end: int
    label: str = Field(min_length=1)
    value: str | None = None


class PiiRecord(BaseModel):
    """One text of a PII set with its gold spans (possibly none)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    text: str
    spans: list[PiiSpan]
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_injection(cls, data):
        if isinstance(data, dict) and "spans" not in data and "label" in data:
            raise ValueError("this looks like an injection record ('label', no 'spans'); "
                             "evaluate the file as injection")
        return data

    @field_validator("source")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        # presidio-research sources end in "#<sentence number>": drop it so one generator run is one group
        return re.sub(r"#\d+$", "", v) if v else v

    @model_validator(mode="after")
    def _spans_inside(self):
        for i, s in enumerate(self.spans):
            if not s.start < s.end <= len(self.text):
                raise ValueError(f"spans[{i}] [{s.start}, {s.end}] is not a non-empty range inside the text "
                                 f"(length {len(self.text)})")
            if s.value is not None and self.text[s.start:s.end] != s.value:
                raise ValueError(f"spans[{i}] value {s.value!r} differs from the text at [{s.start}, {s.end}]: "
                                 f"{self.text[s.start:s.end]!r}")
        return self


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        msg = err["msg"].removeprefix("Value error, ")
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "missing":
            parts.append(f"missing field {loc!r}")
        elif loc:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) and len(repr(got)) <= 40 else None
            parts.append(f"field {loc!r}: {msg}" + (f" (got {shown})" if shown else ""))
        else:
            parts.append(msg)
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _load(path: str | Path, model: type[BaseModel]) -> list:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EvalInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EvalInputError(f"{path}: is a directory, expected a .jsonl file") from None
    except OSError as exc:
        raise EvalInputError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise EvalInputError(f"{path}, line {line}: not UTF-8 text") from None
    records = []
    # split on "\n" only: str.splitlines() would also split at U+2028 inside a JSON string
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{path}, line {n}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise EvalInputError(f"{path}, line {n}: expected a JSON object, got {type(obj).__name__}")
        try:
            records.append(model.model_validate(obj))
        except ValidationError as exc:
            raise EvalInputError(f"{path}, line {n}: {_describe(exc)}") from None
    if not records:
        raise EvalInputError(f"{path}: empty file, no records (expected one JSON object a line)")
    return records


def load_injection(path: str | Path) -> list[InjectionRecord]:
    """Read and validate an injection JSONL file. Raises :class:`EvalInputError`."""
    return _load(path, InjectionRecord)


def load_pii(path: str | Path) -> list[PiiRecord]:
    """Read and validate a PII JSONL file. Raises :class:`EvalInputError`."""
    return _load(path, PiiRecord)


# ---------------------------------------------------------------------------------------------- metrics


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def fbeta(precision: float | None, recall: float | None, beta: float) -> float | None:
    """F-beta; ``None`` when either input is undefined, 0 when both are 0."""
    if precision is None or recall is None:
        return None
    if precision == 0 and recall == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Latency(BaseModel):
    """Wall time of one scanner call, in milliseconds, per call and per KB of UTF-8 text."""

    calls: int
    p50_ms: float
    p95_ms: float
    p50_ms_per_kb: float
    p95_ms_per_kb: float


def _latency(ms: list[float], sizes: list[int]) -> Latency:
    per_kb = [m / max(b / 1024, _MIN_KB) for m, b in zip(ms, sizes)]
    return Latency(calls=len(ms), p50_ms=percentile(ms, 50), p95_ms=percentile(ms, 95),
                   p50_ms_per_kb=percentile(per_kb, 50), p95_ms_per_kb=percentile(per_kb, 95))


class BinaryMetrics(BaseModel):
    """Document-level confusion counts and the ratios derived from them."""

    tp: int
    fp: int
    tn: int
    fn: int
    positives: int
    negatives: int
    precision: float | None
    recall: float | None
    f1: float | None
    f2: float | None
    false_positive_rate: float | None
    balanced_accuracy: float | None


def binary_metrics(gold: Iterable[bool], predicted: Iterable[bool]) -> BinaryMetrics:
    """Confusion counts of paired gold / predicted labels, with precision, recall, F1, F2, FPR and
    balanced accuracy ((recall + specificity) / 2). O(n)."""
    tp = fp = tn = fn = 0
    for g, p in zip(gold, predicted, strict=True):
        if g:
            tp, fn = tp + bool(p), fn + (not p)
        else:
            fp, tn = fp + bool(p), tn + (not p)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    fpr = _ratio(fp, fp + tn)
    balanced = (recall + (1 - fpr)) / 2 if recall is not None and fpr is not None else None
    return BinaryMetrics(tp=tp, fp=fp, tn=tn, fn=fn, positives=tp + fn, negatives=fp + tn, precision=precision,
                         recall=recall, f1=fbeta(precision, recall, 1), f2=fbeta(precision, recall, 2),
                         false_positive_rate=fpr, balanced_accuracy=balanced)


class SpanMetrics(BaseModel):
    """Span-level counts: ``found`` of ``gold`` spans were overlapped by a finding of their label;
    ``correct`` of ``predicted`` findings overlapped a gold span of theirs."""

    gold: int
    found: int
    predicted: int
    correct: int
    precision: float | None
    recall: float | None
    f1: float | None
    f2: float | None


def span_metrics(gold: int, found: int, predicted: int, correct: int) -> SpanMetrics:
    """Precision = correct / predicted, recall = found / gold, and their F1 and F2."""
    precision, recall = _ratio(correct, predicted), _ratio(found, gold)
    return SpanMetrics(gold=gold, found=found, predicted=predicted, correct=correct, precision=precision,
                       recall=recall, f1=fbeta(precision, recall, 1), f2=fbeta(precision, recall, 2))


# -------------------------------------------------------------------------------------------- injection


class CategoryRecall(BaseModel):
    """Injected records of one attack category: how many were flagged, and where a span is known,
    how many had a finding on it."""

    records: int
    detected: int
    recall: float
    span_records: int
    span_hits: int
    span_hit_rate: float | None


class InjectionReport(BaseModel):
    kind: Literal["injection"] = "injection"
    scanner: str
    file: str | None = None
    threshold: float | None = Field(None, description="Score at or above which a finding counts.")
    records: int
    overall: BinaryMetrics
    span_records: int = Field(description="Injected records with an injection_span.")
    span_hits: int = Field(description="Of those, records with a finding (score >= threshold) overlapping it.")
    span_hit_rate: float | None
    by_category: dict[str, CategoryRecall]
    by_source: dict[str, BinaryMetrics]
    by_host_source: dict[str, BinaryMetrics]
    latency: Latency


#: What a scanner returns, for evaluation: anything with ``flagged`` and ``findings`` (``start``, ``end``,
#: ``score``) like :class:`guards.injection.InjectionResult`.
InjectionScanner = Callable[[str], object]


def _injection_report(name: str, records: Sequence[InjectionRecord], results: list, ms: list[float],
                      threshold: float, file: str | None) -> InjectionReport:
    flags = [bool(r.flagged) for r in results]
    golds = [rec.label == 1 for rec in records]

    def grouped(key: Callable[[InjectionRecord], str | None]) -> dict[str, BinaryMetrics]:
        groups: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            groups.setdefault(key(rec) or _NONE, []).append(i)
        return {g: binary_metrics([golds[i] for i in idx], [flags[i] for i in idx]) for g, idx in sorted(groups.items())}

    cats: dict[str, list[int]] = {}
    span_records = span_hits = 0
    for rec, res, flag in zip(records, results, flags):
        if rec.label != 1:
            continue
        c = cats.setdefault(rec.attack_category or _NONE, [0, 0, 0, 0])
        c[0] += 1
        c[1] += flag
        if rec.injection_span is not None:
            s, e = rec.injection_span
            hit = any(f.score >= threshold and f.start < e and s < f.end for f in res.findings)
            c[2] += 1
            c[3] += hit
            span_records += 1
            span_hits += hit
    by_category = {k: CategoryRecall(records=n, detected=d, recall=d / n, span_records=sn, span_hits=sh,
                                     span_hit_rate=_ratio(sh, sn))
                   for k, (n, d, sn, sh) in sorted(cats.items())}
    return InjectionReport(
        scanner=name, file=file, threshold=threshold, records=len(records), overall=binary_metrics(golds, flags),
        span_records=span_records, span_hits=span_hits, span_hit_rate=_ratio(span_hits, span_records),
        by_category=by_category, by_source=grouped(lambda r: r.source),
        by_host_source=grouped(lambda r: r.host_source),
        latency=_latency(ms, [len(r.text.encode()) for r in records]))


def _run_interleaved(records: Sequence, scanners: dict[str, Callable], text_of: Callable,
                     progress: Callable[[int, int], None] | None, warmup: bool) -> tuple[dict, dict]:
    """Run every scanner on every record, record by record, alternating which scanner goes first."""
    names = list(scanners)
    outputs: dict[str, list] = {n: [] for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    if warmup:
        for fn in scanners.values():
            fn("warm up")
    for i, rec in enumerate(records):
        text = text_of(rec)
        for name in (names if i % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            output = scanners[name](text)
            times[name].append((time.perf_counter() - t) * 1000)
            outputs[name].append(output)
        if progress:
            progress(i + 1, len(records))
    return outputs, times


def compare_injection(records: Sequence[InjectionRecord], scanners: dict[str, InjectionScanner], *,
                      threshold: float = 0.5, file: str | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      warmup: bool = True) -> dict[str, InjectionReport]:
    """Evaluate several injection scanners on the same records, interleaved (fair latency).

    Each scanner maps a text to a result with ``flagged`` and ``findings``; ``threshold`` is the score a
    finding needs to count for the span hit rate (use the scanner's own flagging threshold)."""
    outputs, times = _run_interleaved(records, scanners, lambda r: r.text, progress, warmup)
    return {n: _injection_report(n, records, outputs[n], times[n], threshold, file) for n in scanners}


def evaluate_injection(records: Sequence[InjectionRecord], scan: InjectionScanner | None = None, *,
                       threshold: float = 0.5, name: str = "guardrag", file: str | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       warmup: bool = True) -> InjectionReport:
    """Evaluate one injection scanner; by default :func:`guards.injection.scan_injection` at ``threshold``."""
    if scan is None:
        from guards.injection import scan_injection

        def scan(text: str):
            return scan_injection(text, threshold=threshold)
    return compare_injection(records, {name: scan}, threshold=threshold, file=file, progress=progress,
                             warmup=warmup)[name]


#: The keyword list a naive user would write to catch prompt injection: the classic jailbreak phrases,
#: matched case-insensitively with any whitespace between words. The baseline of ``bench/guards.py``.
NAIVE_PHRASES = (
    "ignore previous instructions", "ignore all previous instructions", "ignore the above",
    "ignore your instructions", "disregard previous instructions", "disregard all previous instructions",
    "forget previous instructions", "forget your instructions", "new instructions", "system prompt",
    "you are now", "act as", "pretend to be", "jailbreak", "do anything now",
)
_NAIVE_RE = re.compile("|".join(r"\b" + r"\s+".join(map(re.escape, p.split())) + r"\b" for p in NAIVE_PHRASES),
                       re.IGNORECASE)


class KeywordFinding(BaseModel):
    """A keyword match of :func:`naive_keyword_scan`."""

    category: str = "keyword"
    start: int
    end: int
    score: float = 1.0


class KeywordResult(BaseModel):
    """Verdict of :func:`naive_keyword_scan`: the same shape as an ``InjectionResult`` where evaluation looks."""

    flagged: bool
    findings: list[KeywordFinding]


def naive_keyword_scan(text: str) -> KeywordResult:
    """Baseline: flag a text that contains any of :data:`NAIVE_PHRASES`; each match is a finding (score 1)."""
    found = [KeywordFinding(start=m.start(), end=m.end()) for m in _NAIVE_RE.finditer(text)]
    return KeywordResult(flagged=bool(found), findings=found)


# -------------------------------------------------------------------------------------------------- PII


class PiiReport(BaseModel):
    kind: Literal["pii"] = "pii"
    scanner: str
    file: str | None = None
    records: int
    overall: SpanMetrics
    by_label: dict[str, SpanMetrics]
    by_source: dict[str, SpanMetrics]
    ignored_predictions: dict[str, int] = Field(
        description="Findings of entity types the set does not label (not mapped by LABELS), by type.")
    latency: Latency


#: A PII scanner for evaluation: text -> (entity type, start, end) for each finding.
PiiPredictor = Callable[[str], Iterable[tuple[str, int, int]]]


def _pii_report(name: str, records: Sequence[PiiRecord], outputs: list, ms: list[float],
                file: str | None) -> PiiReport:
    # counts[group] = [gold, found, predicted, correct]
    by_label: dict[str, list[int]] = {}
    by_source: dict[str, list[int]] = {}
    total = [0, 0, 0, 0]
    ignored: dict[str, int] = {}
    for rec, raw in zip(records, outputs):
        preds = []
        for entity, s, e in raw:
            label = LABELS.get(entity)
            if label is None:
                ignored[entity] = ignored.get(entity, 0) + 1
            else:
                preds.append((label, s, e))
        src = by_source.setdefault(rec.source or _NONE, [0, 0, 0, 0])
        for g in rec.spans:
            hit = any(pl == g.label and ps < g.end and g.start < pe for pl, ps, pe in preds)
            for c in (by_label.setdefault(g.label, [0, 0, 0, 0]), src, total):
                c[0] += 1
                c[1] += hit
        for label, s, e in preds:
            ok = any(g.label == label and s < g.end and g.start < e for g in rec.spans)
            for c in (by_label.setdefault(label, [0, 0, 0, 0]), src, total):
                c[2] += 1
                c[3] += ok
    return PiiReport(scanner=name, file=file, records=len(records), overall=span_metrics(*total),
                     by_label={k: span_metrics(*v) for k, v in sorted(by_label.items())},
                     by_source={k: span_metrics(*v) for k, v in sorted(by_source.items())},
                     ignored_predictions=dict(sorted(ignored.items())),
                     latency=_latency(ms, [len(r.text.encode()) for r in records]))


def compare_pii(records: Sequence[PiiRecord], predictors: dict[str, PiiPredictor], *, file: str | None = None,
                progress: Callable[[int, int], None] | None = None, warmup: bool = True) -> dict[str, PiiReport]:
    """Evaluate several PII scanners on the same records, interleaved record by record (fair latency).
    A predictor maps a text to ``(entity_type, start, end)`` triples; the timed call includes consuming them."""
    timed = {n: (lambda text, fn=fn: list(fn(text))) for n, fn in predictors.items()}
    outputs, times = _run_interleaved(records, timed, lambda r: r.text, progress, warmup)
    return {n: _pii_report(n, records, outputs[n], times[n], file) for n in predictors}


def evaluate_pii(records: Sequence[PiiRecord], predict: PiiPredictor | None = None, *, name: str = "guardrag",
                 file: str | None = None, progress: Callable[[int, int], None] | None = None,
                 warmup: bool = True) -> PiiReport:
    """Evaluate one PII scanner; by default :func:`guards.pii.scan_pii` (its default threshold)."""
    if predict is None:
        from guards.pii import scan_pii

        def predict(text: str):
            return [(f.entity, f.start, f.end) for f in scan_pii(text).findings]
    return compare_pii(records, {name: predict}, file=file, progress=progress, warmup=warmup)[name]


# ----------------------------------------------------------------------------------------------- tables


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _binary_row(m: BinaryMetrics, counts: bool = True) -> list[str]:
    return [str(m.positives), str(m.negatives), *((str(m.tp), str(m.fp)) if counts else ()), _f(m.precision),
            _f(m.recall), _f(m.f1), _f(m.f2), _f(m.false_positive_rate), _f(m.balanced_accuracy)]


_BINARY_COLS = ("pos", "neg", "TP", "FP", "precision", "recall", "F1", "F2", "FPR", "bal. acc")
_GROUP_COLS = tuple(c for c in _BINARY_COLS if c not in ("TP", "FP"))


def _latency_table(title: str, lat: Latency):
    from rich.table import Table

    table = Table(title=title)
    for col in ("calls", "p50 ms", "p95 ms", "p50 ms/KB", "p95 ms/KB"):
        table.add_column(col, justify="right")
    table.add_row(str(lat.calls), _f(lat.p50_ms, 2), _f(lat.p95_ms, 2), _f(lat.p50_ms_per_kb, 2),
                  _f(lat.p95_ms_per_kb, 2))
    return table


def injection_tables(report: InjectionReport) -> list:
    """Rich tables for a report: overall, per attack category, per host source, per source, latency."""
    from rich.table import Table

    where = f" on {Path(report.file).name}" if report.file else ""
    overall = Table(title=f"injection{where}: {report.scanner}, threshold {report.threshold} ({report.records} records)")
    for col in (*_BINARY_COLS, "span hit rate"):
        overall.add_column(col, justify="right")
    overall.add_row(*_binary_row(report.overall),
                    f"{_f(report.span_hit_rate)} ({report.span_hits}/{report.span_records})")
    cats = Table(title="recall per attack category (injected records)")
    cats.add_column("attack category")
    for col in ("records", "detected", "recall", "span hit rate"):
        cats.add_column(col, justify="right")
    for name, c in report.by_category.items():
        cats.add_row(name, str(c.records), str(c.detected), _f(c.recall), _f(c.span_hit_rate))
    tables = [overall, cats]
    for title, groups in (("per host source", report.by_host_source), ("per source", report.by_source)):
        t = Table(title=title)
        t.add_column(title.removeprefix("per "), overflow="fold")
        for col in _GROUP_COLS:
            t.add_column(col, justify="right")
        for name, m in groups.items():
            t.add_row(name, *_binary_row(m, counts=False))
        tables.append(t)
    tables.append(_latency_table("scan latency (injection)", report.latency))
    return tables


def pii_tables(report: PiiReport) -> list:
    """Rich tables for a report: overall, per entity label, per source, latency."""
    from rich.table import Table

    def add(table: Table, name: str | None, m: SpanMetrics) -> None:
        row = [str(m.gold), str(m.found), str(m.predicted), str(m.correct), _f(m.precision), _f(m.recall),
               _f(m.f1), _f(m.f2)]
        table.add_row(*([name] if name is not None else []), *row)

    cols = ("gold", "found", "predicted", "correct", "precision", "recall", "F1", "F2")
    where = f" on {Path(report.file).name}" if report.file else ""
    overall = Table(title=f"PII{where}: {report.scanner} ({report.records} texts, span overlap)")
    for col in cols:
        overall.add_column(col, justify="right")
    add(overall, None, report.overall)
    if report.ignored_predictions:
        overall.caption = "left out, types the set does not label: " + ", ".join(
            f"{k} {v}" for k, v in report.ignored_predictions.items())
    tables = [overall]
    for title, first, groups in (("per entity label", "label", report.by_label),
                                 ("per source", "source", report.by_source)):
        t = Table(title=title)
        t.add_column(first, overflow="fold")
        for col in cols:
            t.add_column(col, justify="right")
        for name, m in groups.items():
            add(t, name, m)
        tables.append(t)
    tables.append(_latency_table("scan latency (PII)", report.latency))
    return tables
