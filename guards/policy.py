"""Guard policies: what happens to text at each boundary, given what the scanners found.

Two boundaries, one small policy each (settings: :class:`core.settings.GuardSettings`):

- **Retrieved text** (a chunk leaving the retrieval or graph server) is scanned for injected
  instructions once, at ingest (:func:`scan_retrieved`); the scan is stored with the chunk
  (:func:`scan_to_metadata`), keyed by the chunk's content hash and the scanner's version, and read
  back with :func:`scan_from_metadata`, which refuses a scan made by another scanner version or
  for other text (so the caller rescans). :func:`apply_retrieved` then applies the policy:
  ``block`` drops the text, ``quarantine`` keeps it with the instruction spans neutralised,
  ``annotate`` returns it unchanged. In every case the verdict is returned with the text.
- **Outputs** (an answer leaving the client) are scanned for PII, secrets and exfiltration links by
  :func:`guard_output`: ``redact`` rewrites them, ``block`` withholds the text, ``allow`` reports them.
  PII the user supplied in their own question, and values on the configured allow-list, pass.

Finding offsets always index the text as it was scanned (before any rewriting). Findings never
carry raw PII: PII findings have no ``sentence``; log :attr:`GuardedOutput.text`, never the input.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field

from core.schemas import GUARD_METADATA_KEYS, GuardFinding, GuardVerdict
from core.settings import GuardSettings

from . import injection, pii

__all__ = [
    "POLICY_VERSION",
    "GuardedOutput",
    "RetrievedScan",
    "apply_retrieved",
    "guard_output",
    "neutralise",
    "scan_from_metadata",
    "scan_retrieved",
    "scan_to_metadata",
]

POLICY_VERSION = "1"
METADATA_KEYS = GUARD_METADATA_KEYS  #: chunk metadata keys the stored scan occupies
_EXFIL = {"exfiltration"}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


class RetrievedScan(BaseModel):
    """The injection scan of one piece of retrieved text, as stored with it."""

    scanner: str = Field(description="Version of the injection scanner that made the scan.")
    content_hash: str = Field(description="sha256 of the scanned text.")
    score: float = Field(ge=0, le=1)
    truncated: bool = False
    findings: list[GuardFinding] = Field(default_factory=list)


def scan_retrieved(text: str, content_hash: str | None = None) -> RetrievedScan:
    """Scan retrieved text for injected instructions (every finding is kept; the threshold applies later)."""
    result = injection.scan_injection(text)
    return RetrievedScan(
        scanner=result.scanner_version, content_hash=content_hash or _sha256(text), score=result.score,
        truncated=result.truncated,
        findings=[GuardFinding(category=f.category, start=f.start, end=f.end, score=f.score, sentence=f.sentence)
                  for f in result.findings],
    )


def scan_to_metadata(scan: RetrievedScan) -> dict[str, Any]:
    """Flat, Chroma-storable metadata for a scan (filterable: e.g. ``{"guard_score": {"$lt": 0.5}}``)."""
    return {
        "guard_scanner": scan.scanner, "guard_hash": scan.content_hash, "guard_score": scan.score,
        "guard_truncated": scan.truncated,
        "guard_findings": json.dumps([f.model_dump(exclude_none=True) for f in scan.findings], ensure_ascii=False),
    }


def scan_from_metadata(meta: dict[str, Any], content_hash: str) -> RetrievedScan | None:
    """The stored scan, or None when there is none, it is for other text, or another scanner version made it."""
    if meta.get("guard_scanner") != injection.SCANNER_VERSION or meta.get("guard_hash") != content_hash:
        return None
    try:
        findings = [GuardFinding(**f) for f in json.loads(meta.get("guard_findings") or "[]")]
        return RetrievedScan(scanner=meta["guard_scanner"], content_hash=content_hash,
                             score=float(meta.get("guard_score", 0.0)), truncated=bool(meta.get("guard_truncated")),
                             findings=findings)
    except (ValueError, TypeError):  # damaged by hand or by another tool: rescan
        return None


def _sentence_span(text: str, f: GuardFinding) -> tuple[int, int]:
    """The span of the sentence a finding came from (the finding's own span when it cannot be placed)."""
    sentence = (f.sentence or "").strip()
    if sentence:
        at = text.find(sentence, max(0, f.end - len(sentence)))
        if 0 <= at <= f.start and at + len(sentence) >= f.end:
            return at, at + len(sentence)
    return f.start, f.end


def _merged_spans(text: str, findings: list[GuardFinding]) -> list[tuple[int, int, list[str]]]:
    spans: list[tuple[int, int, list[str]]] = []
    for start, end, cat in sorted((*_sentence_span(text, f), f.category) for f in findings):
        if spans and start <= spans[-1][1]:
            s0, e0, cats = spans[-1]
            spans[-1] = (s0, max(e0, end), cats if cat in cats else [*cats, cat])
        else:
            spans.append((start, end, [cat]))
    return spans


def neutralise(text: str, findings: list[GuardFinding], label: str = "quarantined") -> str:
    """Replace the sentence of each finding (overlaps merged) with a marker naming the categories, e.g.
    ``[quarantined: instruction_override]``: the instruction no longer reaches a model."""
    out, pos = [], 0
    for start, end, cats in _merged_spans(text, findings):
        out.append(text[pos:start])
        out.append(f"[{label}: {', '.join(cats)}]")
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


def apply_retrieved(text: str, scan: RetrievedScan, policy: GuardSettings) -> tuple[str | None, GuardVerdict]:
    """Apply the retrieved-text policy: (text to return or None when blocked, its verdict)."""
    hits = [f for f in scan.findings if f.score >= policy.injection_threshold]
    details: dict[str, Any] = {"scanner": scan.scanner, "score": scan.score}  # the chunk's hash is in its provenance
    if scan.truncated:
        details["truncated"] = True
    verdict = GuardVerdict(policy=f"retrieved:{policy.retrieved_action}@{POLICY_VERSION}", findings=hits,
                           details=details)
    if not hits:
        verdict.status = "flagged" if scan.truncated else "clean"
        if scan.truncated:
            details["reason"] = "only part of the text was scanned"
        return text, verdict
    if policy.retrieved_action in ("block", "quarantine"):  # the verdict must not carry the instruction back
        verdict.findings = [f.model_copy(update={"sentence": None}) for f in hits]
    if policy.retrieved_action == "block":
        verdict.status = "blocked"
        return None, verdict
    if policy.retrieved_action == "quarantine":
        verdict.status = "quarantined"
        return neutralise(text, hits), verdict
    verdict.status = "flagged"
    return text, verdict


class GuardedOutput(BaseModel):
    """An output after its guard: the text to show (None when blocked) and the verdict."""

    text: str | None
    verdict: GuardVerdict
    allowed: list[str] = Field(default_factory=list, description="Entity types let through (user-supplied or allow-listed).")


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _allowed(findings: list[pii.PiiFinding], text: str, user_text: str, allow_list: list[str]) -> set[int]:
    """Indexes of findings the user wrote in their own question, or that lie inside an allow-listed value
    (inside, because Presidio also finds parts of a value, e.g. the domain of an allowed e-mail)."""
    folded_user, folded_text = _fold(user_text), text.casefold()
    spans = []
    for value in filter(None, (v.strip().casefold() for v in allow_list)):
        at = folded_text.find(value)
        while at >= 0:
            spans.append((at, at + len(value)))
            at = folded_text.find(value, at + 1)
    return {
        i for i, f in enumerate(findings)
        if (folded_user and _fold(text[f.start:f.end]) in folded_user)
        or any(s <= f.start and f.end <= e for s, e in spans)
    }


def guard_output(text: str, policy: GuardSettings, *, user_text: str = "") -> GuardedOutput:
    """Scan an output for PII, secrets and exfiltration links and apply the output policy.

    ``user_text`` is what the user wrote (their question): PII they supplied themselves is allowed
    through, as are the values of ``policy.allow_list``.
    """
    found = pii.scan_pii(text, entities=policy.pii_entities, threshold=policy.pii_threshold)
    mine = _allowed(found.findings, text, user_text, policy.allow_list)
    allowed = sorted({found.findings[i].entity for i in mine})
    pii_hits = [f for i, f in enumerate(found.findings) if i not in mine]
    exfil = [f for f in injection.scan_injection(text).findings
             if f.category in _EXFIL and f.score >= policy.injection_threshold]
    findings = [GuardFinding(category=f.entity, start=f.start, end=f.end, score=f.score) for f in pii_hits]
    findings += [GuardFinding(category=f.category, start=f.start, end=f.end, score=f.score) for f in exfil]
    findings.sort(key=lambda f: f.start)
    details: dict[str, Any] = {"pii_scanner": found.scanner_version, "injection_scanner": injection.SCANNER_VERSION}
    if found.truncated:
        details.update(truncated=True, reason="only part of the text was scanned")
    verdict = GuardVerdict(policy=f"output:{policy.output_action}@{POLICY_VERSION}", findings=findings,
                           details=details)
    if not findings:
        verdict.status = "flagged" if found.truncated else "clean"
        return GuardedOutput(text=text, verdict=verdict, allowed=allowed)
    if policy.output_action == "block":
        verdict.status = "blocked"
        return GuardedOutput(text=None, verdict=verdict, allowed=allowed)
    if policy.output_action == "allow":
        verdict.status = "flagged"
        return GuardedOutput(text=text, verdict=verdict, allowed=allowed)
    redacted = pii.anonymize(text, _without_overlaps(pii_hits, exfil), policy.anonymize_mode)
    verdict.status = "redacted"
    return GuardedOutput(text=redacted, verdict=verdict, allowed=allowed)


def _without_overlaps(pii_hits: list[pii.PiiFinding], exfil: list[injection.InjectionFinding]) -> list[pii.PiiFinding]:
    """PII findings plus the exfiltration spans (as EXFILTRATION_LINK), no two overlapping (exfil wins)."""
    links = [pii.PiiFinding(entity="EXFILTRATION_LINK", start=f.start, end=f.end, score=f.score, recognizer="injection")
             for f in exfil]
    rest = [f for f in pii_hits if all(f.end <= x.start or f.start >= x.end for x in links)]
    return sorted(links + rest, key=lambda f: f.start)
