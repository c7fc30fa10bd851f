"""Injection scanner: finds instructions aimed at a model inside text that should be data.

Presidio style: every detector is a Presidio recognizer registered in a
``RecognizerRegistry``; an ``AnalyzerEngine`` composes them. The engine runs
over a tiny NLP engine (:class:`SentenceNlpEngine`) that only splits sentences
with a regex: no spaCy model, no NER, no parse. Scores are set per sentence by
:class:`SentenceContextEnhancer` (a Presidio ``ContextAwareEnhancer``), so an
instruction planted in a long benign document is judged on its own sentence
and is never diluted by the rest.

Hidden carriers (HTML comments, CSS-hidden text, base64 / hex / rot13 payloads,
text split by zero-width characters) are decoded and rescanned by the core
recognizers.

Public API: :func:`scan_injection`, :class:`InjectionResult`,
:class:`InjectionFinding`, :data:`SCANNER_VERSION`.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import os
import re
from collections.abc import Callable

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
from pydantic import BaseModel, Field

__all__ = [
    "SCANNER_VERSION",
    "InjectionFinding",
    "InjectionResult",
    "scan_injection",
]

SCANNER_VERSION = "injection-rules-0.1.0"

CATEGORIES = (
    "instruction_override",
    "role_hijack",
    "prompt_extraction",
    "task_hijack",
    "tool_injection",
    "hidden_carrier",
    "exfiltration",
)

_LANG = "en"
_DECODE_LIMIT = 20_000  # max chars of one decoded payload that is rescanned


class InjectionFinding(BaseModel):
    """One suspected instruction: its category, span in the scanned text, score and sentence."""

    category: str
    start: int
    end: int
    score: float = Field(ge=0.0, le=1.0)
    sentence: str


class InjectionResult(BaseModel):
    """Verdict for one text. ``truncated`` says that only ``scanned_chars`` were scanned."""

    flagged: bool
    score: float = Field(ge=0.0, le=1.0)
    findings: list[InjectionFinding]
    truncated: bool
    scanned_chars: int
    scanner_version: str


# --------------------------------------------------------------------------- sentences

# A sentence ends at a line break, or after . ! ? followed by space and an
# upper-case letter / digit / quote / bracket. Linear time, no model.
_SENT_BREAK = re.compile(r"\n+|(?<=[.!?])[ \t]+(?=[A-Z0-9\"'(\[<*_`])")


def _split_sentences(text: str) -> list[tuple[int, int]]:
    """Return ``(start, end)`` spans of the sentences of ``text`` (O(n))."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _SENT_BREAK.finditer(text):
        if m.start() > pos:
            spans.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        spans.append((pos, len(text)))
    return spans


class _SentenceIndex:
    """Map an offset to the sentence that holds it (binary search)."""

    def __init__(self, text: str, spans: list[tuple[int, int]]):
        self.text = text
        self.spans = spans or [(0, len(text))]
        self._starts = [s for s, _ in self.spans]

    def span_at(self, offset: int) -> tuple[int, int]:

        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        return self.spans[i]

    def sentence_at(self, offset: int) -> str:
        s, e = self.span_at(offset)
        return self.text[s:e]


class SentenceNlpEngine(NlpEngine):
    """A Presidio NLP engine that only splits sentences: no tokens, no NER, nothing to download."""

    def load(self) -> None:  # nothing to load
        return None

    def is_loaded(self) -> bool:
        return True

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        artifacts = NlpArtifacts(
            entities=[],
            tokens=None,
            tokens_indices=[],
            lemmas=[],
            nlp_engine=self,
            language=language,
        )
        artifacts.sentences = _SentenceIndex(text, _split_sentences(text))  # type: ignore[attr-defined]
        return artifacts

    def process_batch(self, texts, language, batch_size=1, n_process=1, **kwargs):
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word: str, language: str) -> bool:
        return False

    def is_punct(self, word: str, language: str) -> bool:
        return bool(word) and all(not c.isalnum() for c in word)

    def get_supported_entities(self) -> list[str]:
        return []

    def get_supported_languages(self) -> list[str]:
        return [_LANG]


# --------------------------------------------------------------------------- context features

_AI_WORDS = re.compile(
    r"\b(?:ai|a\.i\.|assistants?|chat ?bots?|language models?|llms?|gpt[-\d.]*|claude|gemini|copilot|"
    r"the model|bots?|agents?)\b",
    re.IGNORECASE,
)
_SECOND_PERSON = re.compile(r"\b(?:you|your|yourself)\b", re.IGNORECASE)
_INSTR_NOUNS = re.compile(
    r"\b(?:instructions?|prompts?|rules|guidelines|directives?|polic(?:y|ies)|restrictions|filters|"
    r"responses?|answers?|repl(?:y|ies)|outputs?|summary|task)\b",
    re.IGNORECASE,
)
_URGENT = re.compile(
    r"\b(?:important|urgent|immediately|must|attention|override|mandatory)\b",
    re.IGNORECASE,
)
_IMPERATIVE_START = re.compile(
    r"^\W{0,4}(?:please\s+)?(?:ignore|disregard|forget|reveal|print|repeat|output|say|reply|respond|answer|"
    r"write|include|add|insert|append|send|forward|email|post|upload|visit|click|tell|show|provide|"
    r"modify|change|translate|summari[sz]e|stop|do not|don't|never|always|make sure|ensure|remember)\b",
    re.IGNORECASE,
)


def _context_bonus(sentence: str) -> float:
    """Score bonus from simple features of the sentence a hit sits in."""
    bonus = 0.0
    if _AI_WORDS.search(sentence):
        bonus += 0.15
    if _SECOND_PERSON.search(sentence) and _INSTR_NOUNS.search(sentence):
        bonus += 0.1
    if _IMPERATIVE_START.search(sentence):
        bonus += 0.05
    if _URGENT.search(sentence):
        bonus += 0.05
    return bonus


class SentenceContextEnhancer(ContextAwareEnhancer):
    """Raise each hit's score by features of its own sentence (never the whole document).

    A recognizer may set ``recognition_metadata["no_context"] = True`` to keep its score as is.
    """

    def __init__(self):
        super().__init__(
            context_similarity_factor=0.0,
            min_score_with_context_similarity=0.0,
            context_prefix_count=0,
            context_suffix_count=0,
        )

    def enhance_using_context(
        self, text, raw_results, nlp_artifacts, recognizers, context=None
    ):
        index: _SentenceIndex = getattr(
            nlp_artifacts, "sentences", None
        ) or _SentenceIndex(text, _split_sentences(text))
        for r in raw_results:
            if r.recognition_metadata.get("no_context"):
                continue
            bonus = _context_bonus(index.sentence_at(r.start))
            r.score = min(1.0, r.score + bonus)
        return raw_results


# --------------------------------------------------------------------------- recognizers


def _p(name: str, regex: str, score: float) -> Pattern:
    return Pattern(name=name, regex=regex, score=score)


_VERB_IGNORE = r"(?:ignore|disregard|forget|override|bypass|discard|abandon|skip|drop|neglect|overlook)"
_QUAL = r"(?:previous|prior|above|earlier|preceding|original|initial|system|old|former|existing|given|developer)"
_INSTR = r"(?:instructions?|prompts?|directives?|rules|guidelines|commands?|orders|context|constraints|programming|guardrails)"
_DET = r"(?:(?:all|any|the|your|my|of|these|those|every|everything|that|what)\s+){0,3}"


def _override_recognizer() -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity="INSTRUCTION_OVERRIDE",
        name="InstructionOverrideRecognizer",
        supported_language=_LANG,
        patterns=[
            _p(
                "ignore_previous",
                rf"\b{_VERB_IGNORE}\s+{_DET}{_QUAL}\s+(?:\w+\s+)?{_INSTR}\b",
                0.85,
            ),
            _p(
                "ignore_everything_above",
                rf"\b{_VERB_IGNORE}\s+(?:all\s+|everything\s+|anything\s+)"
                r"(?:(?:you\s+were\s+told|said|written|stated)\s+)?(?:above|before|so far|previously)\b",
                0.75,
            ),
            _p("ignore_instructions", rf"\b{_VERB_IGNORE}\s+{_DET}{_INSTR}\b", 0.4),
            _p(
                "new_instructions",
                r"\b(?:new|updated|real|actual|revised)\s+(?:instructions?|task|rules|system prompt)\s*:",
                0.7,
            ),
            _p(
                "from_now_on",
                r"\bfrom now on,?\s+(?:you|your|the assistant|respond|reply|answer|only)\b",
                0.55,
            ),
            _p(
                "instead_of_task",
                r"\b(?:do not|don't|stop)\s+(?:summari[sz]|translat|answer)\w*\s+(?:this|the)\b",
                0.55,
            ),
        ],
    )


def _role_recognizer() -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity="ROLE_HIJACK",
        name="RoleHijackRecognizer",
        supported_language=_LANG,
        patterns=[
            _p(
                "you_are_now",
                r"\byou\s+are\s+now\s+(?:a|an|the|my|in|called|named|free|no longer|DAN)\b",
                0.6,
            ),
            _p(
                "you_are_no_longer",
                r"\byou\s+(?:are|'re)\s+no\s+longer\s+(?:a|an|bound|restricted|an? ai)\b",
                0.65,
            ),
            _p(
                "pretend",
                r"\b(?:pretend|imagine)\s+(?:to\s+be|you\s+are|that\s+you(?:'re|\s+are)|you're)\b",
                0.5,
            ),
            _p(
                "act_as",
                r"\b(?:act|behave|respond|roleplay|role-play)\s+as\s+(?:if\s+you\s+were\s+)?(?:an?|the|my)\b",
                0.3,
            ),
            _p(
                "unrestricted",
                r"\b(?:unrestricted|unfiltered|uncensored|jailbr[eo]ak\w*|no\s+(?:restrictions|filters|rules|limits|guidelines))\b",
                0.35,
            ),
            _p(
                "developer_mode", r"\b(?:developer|god|debug|sudo|admin)\s+mode\b", 0.45
            ),
            _p(
                "dan",
                r"(?-i:\bDAN\b)(?=[^\n]{0,80}(?:do anything|mode|jailbr|you|prompt))|\bdo\s+anything\s+now\b",
                0.7,
            ),
        ],
    )


_REVEAL = r"(?:reveal|print|repeat|show|output|display|tell\s+me|leak|dump|disclose|share|give\s+me|write\s+(?:out|down)|recite|expose|return|list|spell\s+out|echo|paste)"
_SECRET_OBJ = (
    r"(?:system\s+(?:prompt|message|instructions?)|(?:initial|original|hidden|secret|internal|developer|pre-?prompt)"
    r"\s+(?:prompt|instructions?|message|rules|guidelines)|instructions\s+(?:you\s+were\s+given|above)|prompt\s+above)"
)


def _extraction_recognizer() -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity="PROMPT_EXTRACTION",
        name="PromptExtractionRecognizer",
        supported_language=_LANG,
        patterns=[
            _p(
                "reveal_system_prompt",
                rf"\b{_REVEAL}\b[^\n]{{0,40}}?\b{_SECRET_OBJ}",
                0.8,
            ),
            _p(
                "your_secret",
                rf"\b{_REVEAL}\b[^\n]{{0,30}}?\byour\s+(?:\w+\s+)?(?:secrets?|api[\s_-]?keys?|passwords?|credentials|tokens?|instructions|prompt|configuration|rules)\b",
                0.7,
            ),
            _p(
                "the_secret",
                rf"\b{_REVEAL}\b[^\n]{{0,30}}?\b(?:the|any)\s+(?:secret|api[\s_-]?key|access\s+token|credentials)\b",
                0.35,
            ),
            _p(
                "what_is_your_prompt",
                r"\bwhat\s+(?:is|are|were)\s+your\s+(?:system\s+prompt|instructions|initial\s+instructions|rules)\b",
                0.6,
            ),
        ],
    )


# Verbs used to tell an assistant how to change its output.
_MODIFY = (
    r"(?:add|include|insert|append|integrate|incorporate|embed|mention|modify|change|rewrite|format|provide|"
    r"write|use|replace|convert|substitute|remove|group|combine|scramble|jumble|misspell|anagram|rearrange|"
    r"introduce|enhance|augment|enrich|end|begin|start|conclude|translate|respond|reply|answer|encourage|"
    r"suggest|promote|recommend|tease|hint|stress|emphasi[sz]e|invite|tell|ask|direct|redirect|link|"
    r"weave|blend|merge|fuse|infuse|meld|absorb|assimilate|inject|deploy|employ|utili[sz]e|leverage|render|"
    r"make|ensure|let|put|place|output|print|say|state|express|sign|close)"
)
_OUTPUT_NOUN = r"(?:response|responses|answer|answers|reply|replies|output|summary|summaries|message|translation)"
_CODE_NOUN = r"(?:code|codebase|solution|implementation|algorithm|program|script|elucidation|explanation)"
_GEN_VERBS = (
    r"(?:explain|describe|write|compose|draft|develop|generate|produce|provide|translate|summari[sz]e|"
    r"break\s+down|outline|tell\s+me|teach)"
)


def _task_recognizer() -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity="TASK_HIJACK",
        name="TaskHijackRecognizer",
        supported_language=_LANG,
        patterns=[
            _p(
                "instead_reply",
                r"\binstead,?\s+(?:just\s+|only\s+)?(?:reply|respond|answer|say|write|output|print|return|tell)\b",
                0.6,
            ),
            _p(
                "when_summarising",
                r"\b(?:when|while|after|before|if)\s+(?:you\s+)?(?:are\s+)?(?:summari[sz]|translat|answer|respond|process|read|analy[sz])\w*\b[^\n]{0,60}?\b(?:also|include|add|mention|append|make sure|always|first|tell|say|insert)\b",
                0.6,
            ),
            _p(
                "ai_please",
                r"\b(?:ai|assistants?|chat ?bot|language model|llm|gpt)\b,\s*(?:please|you\s+(?:must|should|will)|make\s+sure|do\s+not|don't|always|never|ignore|remember)\b|\b(?:dear|hey|hi|attention)\s+(?:ai|assistant|chat ?bot|llm|language model)\b",
                0.55,
            ),
            _p(
                "ai_vocative",
                r"\b(?:ai|assistants?|chat ?bots?|llms?|language models?|gpt)\s*[:,]\s*(?:please\s+)?(?:ignore|disregard|forget|reveal|print|repeat|output|say|reply|respond|answer|write|include|add|insert|send|forward|tell|recommend|mention|do\s+not|don't|never|always|stop)\b",
                0.6,
            ),
            _p(
                "ignore_user_request",
                rf"\b{_VERB_IGNORE}\s+(?:the\s+)?(?:user'?s?|human'?s?|original)\s+(?:question|request|query|task|message)\b",
                0.55,
            ),
            _p(
                "ai_you_must",
                r"\b(?:language\s+models?|ai|assistants?|llms?|chat ?bots?)\b[^\n.]{0,60}?\byou\s+(?:must|should|will|need\s+to|are\s+(?:required|instructed|expected)\s+to)\b",
                0.5,
            ),
            _p(
                "respond_from_now_on",
                r"\b(?:respond|reply|answer|speak|write|talk)\b[^\n.]{0,60}?\bfrom\s+now\s+on\b",
                0.5,
            ),
            _p("role_prefix", r"(?m)^\s*(?:assistant|system|ai)\s*:\s*\S", 0.4),
            _p(
                "note_to_ai",
                r"\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?(?:ai|assistant|llm|model|language model|chatbot|summari[sz]er|reader\s+bot)\b",
                0.6,
            ),
            # an imperative that changes the assistant's output: "... in your response", "Modify your answer ..."
            _p(
                "your_output",
                rf"(?m)^\W{{0,4}}(?:please\s+)?{_MODIFY}\b[^\n]{{0,120}}?\byour\s+(?:\w+\s+)?{_OUTPUT_NOUN}\b",
                0.6,
            ),
            _p(
                "in_your_output",
                rf"\b(?:in|to|into|within|throughout|for)\s+your\s+(?:\w+\s+)?{_OUTPUT_NOUN}\b",
                0.45,
            ),
            # code injected into the assistant's code: "blend the following code block into your solution"
            _p(
                "following_code",
                rf"\b(?:following|subsequent|below|this)\s+code\s+(?:block|excerpt|snippet|section|fragment)\b[^\n]{{0,80}}?\byour\s+(?:\w+\s+)?{_CODE_NOUN}\b",
                0.5,
            ),
            _p(
                "your_code_following",
                rf"\byour\s+(?:\w+\s+)?{_CODE_NOUN}\b[^\n]{{0,80}}?\b(?:following|subsequent|below)\s+code\s+(?:block|excerpt|snippet|section)\b",
                0.5,
            ),
        ],
    )


def _result(recognizer, entity: str, start: int, end: int, score: float, pattern: str, **meta) -> RecognizerResult:
    """A RecognizerResult stamped with the recognizer that made it and the rule that fired."""
    return RecognizerResult(
        entity_type=entity,
        start=start,
        end=end,
        score=score,
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: recognizer.name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
            "pattern": pattern,
            **meta,
        },
    )


class StandaloneRequestRecognizer(PatternRecognizer):
    """A self-contained request or question on its own line: a task for whoever reads the data.

    A line that points back into the document ("Why does this happen?") is part of the
    document's own discussion and is dropped.
    """

    _DEICTIC = re.compile(
        r"\b(?:this|that|these|those|it|its|here|above|below|my|our|we|us)\b",
        re.IGNORECASE,
    )

    def __init__(self):
        super().__init__(
            supported_entity="TASK_HIJACK",
            name="StandaloneRequestRecognizer",
            supported_language=_LANG,
            patterns=[
                _p(
                    "standalone_request",
                    rf"(?m)^(?:please\s+)?{_GEN_VERBS}\s+(?:a|an|the|me|how|what|why|in)\b[^\n]{{3,160}}[.?!]?[ \t]*$",
                    0.5,
                ),
                _p(
                    "standalone_question",
                    r"(?m)^(?:what|who|how|why|where|when|which|can\s+you|could\s+you|would\s+you)\b(?:'s)?[^\n]{3,140}\?[ \t]*$",
                    0.5,
                ),
            ],
        )

    def invalidate_result(self, pattern_text: str) -> bool | None:
        return bool(self._DEICTIC.search(pattern_text))


class CodePayloadRecognizer(EntityRecognizer):
    """ "Use the following code block ..." followed by a fenced block that phones home or destroys.

    The request alone is common in benign answers; the score rises only when the block that
    follows calls the network, runs downloaded code, reads secrets/cookies or deletes system files.
    """

    _INTRO = re.compile(
        r"(?m)^[^\n]{0,120}\b(?:following|subsequent|below|this)\s+code\s+(?:block|excerpt|snippet|section|fragment)\b[^\n]{0,160}$"
    )
    _FENCE = re.compile(r"```[^\n]*\n(.{0,4000}?)```", re.DOTALL)
    _RISKY = re.compile(
        r"requests\.(?:post|put)|urlopen|urlretrieve|socket\.socket|\.sendall|\.sendto|smtplib|yagmail|"
        r"\bexec\(|\beval\(|os\.system|subprocess|os\.remove|rm\s+-rf|/dev/sd|cookies\s*=|cookie|os\.environ|ftplib|"
        r"paramiko|\bscp\b|mqtt|bluetooth|psutil|storbinary|shutil\.move|curl|wget|nohup|http\.client|aiohttp|httpx\.get"
    )

    def __init__(self):
        super().__init__(
            supported_entities=["TASK_HIJACK"],
            name="CodePayloadRecognizer",
            supported_language=_LANG,
        )

    def load(self) -> None:
        return None

    def analyze(self, text, entities, nlp_artifacts=None):
        out = []
        for m in self._INTRO.finditer(text):
            fence = (
                self._FENCE.match(text, m.end() + 1)
                if m.end() + 1 < len(text)
                else None
            )
            if fence is None:
                continue
            risky = {h.group(0) for h in self._RISKY.finditer(fence.group(1))}
            score = 0.3 + (0.25 if len(risky) >= 2 else 0.1 if risky else 0.0)
            out.append(_result(self, "TASK_HIJACK", m.start(), fence.end(), score, "code_payload"))
        return out


def _tool_recognizer() -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity="TOOL_INJECTION",
        name="ToolInjectionRecognizer",
        supported_language=_LANG,
        patterns=[
            _p(
                "json_tool_key",
                r"[{,]\s*[\"'](?:tool|tool_name|tool_calls?|tool_use|function_call|function_name|recipient_name)[\"']\s*:",
                0.7,
            ),
            _p(
                "json_function_obj",
                r"[\"']function[\"']\s*:\s*\{\s*[\"']name[\"']",
                0.7,
            ),
            _p(
                "json_name_arguments",
                r"[\"']name[\"']\s*:\s*[\"'][\w.-]+[\"']\s*,\s*[\"'](?:arguments|parameters|args)[\"']\s*:",
                0.6,
            ),
            _p(
                "xml_tool_tag",
                r"<\s*/?\s*(?:tool_call|tool_use|function_call|function_calls|tool_code|invoke|antml:invoke|tool_result)\b|<function\s*=",
                0.75,
            ),
            _p(
                "control_tokens",
                r"<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|begin_of_text)\s*\|>|\[/?INST\]|<</?SYS>>",
                0.85,
            ),
            _p(
                "chat_header",
                r"(?m)^#{2,}\s*(?:system|instruction|assistant)\s*:?\s*$",
                0.45,
            ),
        ],
    )


_DATA_WORDS = re.compile(
    r"\b(?:conversation|chat|history|password|credentials?|api[\s_-]?keys?|secrets?|tokens?|personal|private|"
    r"user'?s?|previous\s+messages|context|data|information|emails?|cookies?|session|documents?|files?|contacts)\b",
    re.IGNORECASE,
)


class ExfiltrationRecognizer(EntityRecognizer):
    """Markdown images/links whose URL carries data or placeholders; requests to send data somewhere."""

    _MD_URL = re.compile(r"(!?)\[[^\]\n]{0,200}\]\(\s*<?(https?://[^)\s>]{1,2000})")
    # a placeholder in the query string ("?q={conversation}"); "{{x}}" is a docs template, not a carrier
    _URL_PLACEHOLDER = re.compile(
        r"https?://[^\s)\"'<>?]*\?[^\s)\"'<>]*?(?:(?<!\{)\{(?!\{)[^{}\s]{1,60}\}(?!\})|%7B[^%\s]{1,60}%7D|\$\{\w+\}|<[A-Z_]{2,}>|\[[A-Z_]{3,}\])",
        re.IGNORECASE,
    )
    _SEND = re.compile(
        r"(?:^|[.!:;,]\s+|\b(?:please|also|then|and|now|must|should)\s+)"
        r"(?:send|forward|e-?mail|post|upload|transmit|exfiltrate|leak|submit|copy)\s+[^\n.!?]{0,80}?"
        r"\b(?:to|at|via)\s+(?:this\s+|the\s+following\s+|my\s+)?(?:(?:email\s+)?address\s+|url\s+|endpoint\s+|server\s+|webhook\s+)?"
        r"(?:<?[\w.+-]+@[\w-]+(?:\.[\w-]+)+|<?https?://\S+|[\w-]+\.(?:com|net|org|io|xyz|ru|cn)\b)",
        re.IGNORECASE | re.MULTILINE,
    )

    def __init__(self):
        super().__init__(
            supported_entities=["EXFILTRATION"],
            name="ExfiltrationRecognizer",
            supported_language=_LANG,
        )

    def load(self) -> None:
        return None

    def analyze(self, text, entities, nlp_artifacts=None):
        out: list[RecognizerResult] = []
        for m in self._MD_URL.finditer(text):
            url = m.group(2)
            q = url.split("?", 1)[1] if "?" in url else ""
            score = 0.0
            if re.search(r"\{[^}]*\}|%7B|\$\{|<[A-Z_]+>", url, re.IGNORECASE):
                score = 0.8
            elif q:
                values = [kv.split("=", 1)[1] for kv in q.split("&") if "=" in kv]
                longest = max((len(v) for v in values), default=0)
                if longest >= 40 or (longest >= 16 and m.group(1) == "!"):
                    score = 0.6 if m.group(1) == "!" else 0.45
            if score:
                out.append(self._result(m.start(), m.end(), score, "markdown_url_data"))
        for m in self._URL_PLACEHOLDER.finditer(text):
            out.append(self._result(m.start(), m.end(), 0.55, "url_placeholder"))
        for m in self._SEND.finditer(text):
            score = 0.55 if _DATA_WORDS.search(m.group(0)) else 0.25
            out.append(self._result(m.start(), m.end(), score, "send_to_address"))
        return out

    def _result(self, start, end, score, pattern):
        return _result(self, "EXFILTRATION", start, end, score, pattern)


# --------------------------------------------------------------------------- hidden carriers

_INVISIBLE = (
    "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"
)
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE}{_BIDI}]+")
_TAG_CHARS_RE = re.compile(
    "[\U000e0000-\U000e007f]+"
)  # Unicode "tag" characters (ASCII smuggling)


class HiddenCarrierRecognizer(EntityRecognizer):
    """Zero-width / bidi runs, HTML comments and CSS-hidden text holding instructions, encoded payloads.

    ``rescan`` is a callable returning the best core-recognizer score of a decoded text.
    """

    _COMMENT = re.compile(r"<!--(.{0,5000}?)-->", re.DOTALL)
    _CSS_HIDDEN = re.compile(
        r"<(\w+)[^>]{0,300}?style\s*=\s*[\"'][^\"']{0,300}?(?:display\s*:\s*none|visibility\s*:\s*hidden|"
        r"font-size\s*:\s*0(?:px|pt|em)?\b|opacity\s*:\s*0(?:\.0+)?\b|(?:color\s*:\s*(?:white|#fff(?:fff)?)\b))"
        r"[^\"']{0,300}[\"'][^>]{0,300}>(.{1,5000}?)</\1>",
        re.DOTALL | re.IGNORECASE,
    )
    _HIDDEN_ATTR = re.compile(
        r"<(\w+)[^>]{0,300}?\s(?:hidden|aria-hidden\s*=\s*[\"']true[\"'])[^>]{0,300}>(.{1,5000}?)</\1>",
        re.DOTALL | re.IGNORECASE,
    )
    _B64 = re.compile(
        r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{24,}={0,2}(?![A-Za-z0-9+/=_-])"
    )
    _HEX = re.compile(r"(?<![0-9A-Fa-f])(?:(?:0x|\\x)?[0-9A-Fa-f]{2}[\s:]?){16,}")
    _ROT13_HINT = re.compile(r"\brot-?13\b|\bcaesar\b", re.IGNORECASE)

    def __init__(self, rescan: Callable[[str], float]):
        self._rescan = rescan
        super().__init__(
            supported_entities=["HIDDEN_CARRIER"],
            name="HiddenCarrierRecognizer",
            supported_language=_LANG,
        )

    def load(self) -> None:
        return None

    def analyze(self, text, entities, nlp_artifacts=None):
        out: list[RecognizerResult] = []
        for m in _INVISIBLE_RE.finditer(text):
            run = m.group(0)
            bidi = any(c in _BIDI for c in run)
            score = 0.6 if bidi else (0.55 if len(run) >= 3 else 0.2)
            out.append(self._result(m.start(), m.end(), score, "invisible_chars"))
        for m in _TAG_CHARS_RE.finditer(text):
            hidden = "".join(chr(ord(c) - 0xE0000) for c in m.group(0))
            out.append(
                self._result(
                    m.start(), m.end(), max(0.6, self._rescan(hidden)), "unicode_tags"
                )
            )
        for rx, group, name in (
            (self._COMMENT, 1, "html_comment"),
            (self._CSS_HIDDEN, 2, "css_hidden"),
            (self._HIDDEN_ATTR, 2, "hidden_attr"),
        ):
            for m in rx.finditer(text):
                inner = m.group(group)
                inner_score = self._rescan(inner)
                if (
                    inner_score < 0.5
                    and _SECOND_PERSON.search(inner)
                    and _IMPERATIVE_START.search(inner.strip())
                ):
                    inner_score = (
                        0.5  # an imperative to "you" that nobody is meant to see
                    )
                base = 0.1 if name == "html_comment" else 0.3
                out.append(
                    self._result(
                        m.start(), m.end(), max(base, min(1.0, inner_score + 0.1)), name
                    )
                )
        for m in self._B64.finditer(text):
            decoded = _decode_b64(m.group(0))
            if decoded:
                s = self._rescan(decoded)
                if s >= 0.3:
                    out.append(
                        self._result(m.start(), m.end(), min(1.0, s + 0.1), "base64")
                    )
        for m in self._HEX.finditer(text):
            decoded = _decode_hex(m.group(0))
            if decoded:
                s = self._rescan(decoded)
                if s >= 0.3:
                    out.append(
                        self._result(m.start(), m.end(), min(1.0, s + 0.1), "hex")
                    )
        if self._ROT13_HINT.search(text):
            index = getattr(nlp_artifacts, "sentences", None) or _SentenceIndex(
                text, _split_sentences(text)
            )
            for s, e in index.spans:
                sc = self._rescan(codecs.decode(text[s:e], "rot13"))
                if sc >= 0.5:
                    out.append(self._result(s, e, min(1.0, sc + 0.1), "rot13"))
        return out

    def _result(self, start, end, score, pattern):
        return _result(self, "HIDDEN_CARRIER", start, end, score, pattern, no_context=True)


def _printable_ratio(s: str) -> float:
    if not s:
        return 0.0
    return sum(1 for c in s if c.isprintable() or c in "\n\t") / len(s)


def _decode_b64(token: str) -> str | None:
    if (
        len(token) > _DECODE_LIMIT * 2
        or not re.search(r"[a-z]", token)
        or not re.search(r"[A-Z0-9]", token)
    ):
        return None
    t = token.replace("-", "+").replace("_", "/")
    t += "=" * (-len(t) % 4)
    try:
        raw = base64.b64decode(t, validate=True)
        s = raw.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return s if _printable_ratio(s) > 0.95 and " " in s else None


def _decode_hex(token: str) -> str | None:
    h = re.sub(r"0x|\\x|[\s:]", "", token)
    if len(h) % 2 or len(h) > _DECODE_LIMIT * 2:
        return None
    try:
        s = bytes.fromhex(h).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return s if _printable_ratio(s) > 0.95 and " " in s else None


# --------------------------------------------------------------------------- engines

_ENTITY_TO_CATEGORY = {c.upper(): c for c in CATEGORIES}


def _core_recognizers() -> list[EntityRecognizer]:
    return [
        _override_recognizer(),
        _role_recognizer(),
        _extraction_recognizer(),
        _task_recognizer(),
        StandaloneRequestRecognizer(),
        _tool_recognizer(),
        ExfiltrationRecognizer(),
        CodePayloadRecognizer(),
    ]


def _build_engine(recognizers: list[EntityRecognizer]) -> AnalyzerEngine:
    registry = RecognizerRegistry(supported_languages=[_LANG])
    for r in recognizers:
        registry.add_recognizer(r)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=SentenceNlpEngine(),
        supported_languages=[_LANG],
        context_aware_enhancer=SentenceContextEnhancer(),
    )


_CORE_ENGINE: AnalyzerEngine | None = None
_FULL_ENGINE: AnalyzerEngine | None = None


def _core_engine() -> AnalyzerEngine:
    global _CORE_ENGINE
    if _CORE_ENGINE is None:
        _CORE_ENGINE = _build_engine(_core_recognizers())
    return _CORE_ENGINE


def _core_best_score(text: str) -> float:
    """Best score the core recognizers give a decoded / hidden text (bounded length)."""
    text = text[:_DECODE_LIMIT]
    if not text.strip():
        return 0.0
    results = _core_engine().analyze(text=text, language=_LANG)
    return max((r.score for r in results), default=0.0)


def _full_engine() -> AnalyzerEngine:
    global _FULL_ENGINE
    if _FULL_ENGINE is None:
        _FULL_ENGINE = _build_engine(
            _core_recognizers() + [HiddenCarrierRecognizer(_core_best_score)]
        )
    return _FULL_ENGINE


# --------------------------------------------------------------------------- public API


def _strip_invisible(text: str) -> tuple[str, list[int]]:
    """Remove invisible characters; return the cleaned text and, per kept char, its original offset."""
    kept: list[int] = []
    parts: list[str] = []
    pos = 0
    for m in _INVISIBLE_RE.finditer(text):
        parts.append(text[pos : m.start()])
        kept.extend(range(pos, m.start()))
        pos = m.end()
    parts.append(text[pos:])
    kept.extend(range(pos, len(text)))
    return "".join(parts), kept


def scan_injection(
    text: str, *, threshold: float = 0.5, max_chars: int = 200_000
) -> InjectionResult:
    """Scan ``text`` (data, e.g. a retrieved chunk) for instructions aimed at a model.

    Only the first ``max_chars`` characters are scanned; ``truncated`` says so.
    Spans index into ``text``. Cost is linear in the scanned length.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text is None:
        text = ""
    text = str(text)
    truncated = len(text) > max_chars
    scanned = text[:max_chars] if truncated else text
    findings: list[InjectionFinding] = []
    if scanned.strip(_INVISIBLE + _BIDI + " \t\r\n"):
        index = _SentenceIndex(scanned, _split_sentences(scanned))
        results = list(_full_engine().analyze(text=scanned, language=_LANG))
        # Text split by zero-width characters: scan it again without them, map spans back.
        if _INVISIBLE_RE.search(scanned):
            cleaned, kept = _strip_invisible(scanned)
            if cleaned.strip():
                for r in _core_engine().analyze(text=cleaned, language=_LANG):
                    r.start = kept[r.start] if r.start < len(kept) else len(scanned)
                    r.end = (
                        kept[r.end - 1] + 1 if 0 < r.end <= len(kept) else len(scanned)
                    )
                    results.append(r)
        seen: set[tuple[str, int, int]] = set()
        for r in sorted(results, key=lambda r: (-r.score, r.start)):
            category = _ENTITY_TO_CATEGORY.get(r.entity_type, r.entity_type.lower())
            key = (category, r.start, r.end)
            if key in seen:
                continue
            seen.add(key)
            findings.append(
                InjectionFinding(
                    category=category,
                    start=r.start,
                    end=r.end,
                    score=round(min(1.0, max(0.0, r.score)), 4),
                    sentence=index.sentence_at(r.start)[:1000],
                )
            )
        findings.sort(key=lambda f: (f.start, -f.score))
    elif _INVISIBLE_RE.search(scanned):
        m = _INVISIBLE_RE.search(scanned)
        findings.append(
            InjectionFinding(
                category="hidden_carrier",
                start=m.start(),
                end=len(scanned),
                score=0.2,
                sentence="",
            )
        )
    best = max((f.score for f in findings), default=0.0)
    return InjectionResult(
        flagged=best >= threshold,
        score=best,
        findings=findings,
        truncated=truncated,
        scanned_chars=len(scanned),
        scanner_version=SCANNER_VERSION,
    )
