"""The judge, without MCP: faithfulness, relevance, context critique, safety.

The default backend is offline and deterministic (``offline-evidence``): answers are
split into claims and each claim is checked against the context sentences with
sentence embeddings plus lexical, number/date, entity, negation and antonym cues
(:mod:`servers.judge.evidence`), weighted and thresholded as the rubric file says.
When model endpoints are configured (``Settings.llm``), the LLM judge runs first with
the rubric's prompt; if every endpoint fails (timeouts, HTTP errors, invalid JSON
after one repair) the offline judge answers and the result says so in
``run.fallback_from``. Safety is always judged offline by the guards' scanners and
the rubric's harmful-content rules.

Every result is a validated pydantic object with finite scores in [0, 1]: empty,
blank, tiny and huge inputs included. Inputs longer than the judge reads are cut and
``run.truncated`` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from core.llm import ChatBackend, Completion, LLMError, backends_from_settings
from core.settings import Settings, get_settings
from servers.judge.evidence import (
    ANTONYMS,
    NEGATION_CUES,
    ClaimEvidence,
    Evidence,
    content_stems,
    numbers,
    split_claims,
    split_sentences,
    tokens,
)
from servers.judge.rubrics import Rubric, load_rubric
from servers.judge.schemas import (
    ClaimVerdict,
    ContextCritique,
    ContextGrade,
    Contradiction,
    FaithfulnessResult,
    JudgeAllResult,
    JudgeRun,
    LLMCritique,
    LLMFaithfulness,
    LLMRelevance,
    RelevanceResult,
    SafetyCategory,
    SafetyResult,
)

__all__ = ["EMBED_ALL_UPTO", "LONG_FORM_NOTE", "MAX_ANSWER_CHARS", "MAX_CONTEXTS", "MAX_CONTEXT_CHARS", "MAX_SENTENCES",
           "PENALTIES", "PREFILTER_K", "VECTOR_CACHE", "JudgeEngine", "VectorCache", "claim_features", "claim_support",
           "claim_threshold", "hard_contradiction", "long_form", "never_supported"]

log = logging.getLogger("guardrag.judge")
M = TypeVar("M", bound=BaseModel)

MAX_ANSWER_CHARS = 20_000
"""The judge reads at most this much of an answer, a question or a text to check for safety."""
MAX_CONTEXT_CHARS = 50_000
"""... and of each context."""
MAX_CONTEXTS = 50
MAX_SENTENCES = 600
"""Context sentences compared with the claims (in context order): bounds the embedding work of one call."""
OFFLINE = "offline-evidence"
VECTOR_CACHE = 4096
"""Sentence vectors kept between calls (about 1.5 KiB each)."""
PREFILTER_K = 3
"""Context sentences embedded per claim: the best ``PREFILTER_K`` by lexical overlap (see ``Evidence.candidates``)."""
EMBED_ALL_UPTO = 8
"""Contexts of at most this many sentences are embedded whole (no prefilter: a paraphrase sharing no word with
its sentence still finds it)."""

_REFUSAL = re.compile(r"\b(?:i (?:do not|don'?t|cannot|can'?t) (?:know|answer|help|say|find)|no (?:information|answer)"
                      r"|not (?:enough|sufficient) (?:information|context)|unable to (?:answer|find|determine)"
                      r"|(?:cannot|can'?t) be (?:answered|determined))\b", re.I)


_GUARDS_IMPORT = threading.Lock()  #: guards is imported on first judge_safety (Presidio takes seconds)


def _finite(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """``x`` clipped to [lo, hi]; NaN and infinities become ``lo``."""
    x = float(x)
    return lo if not math.isfinite(x) else min(hi, max(lo, x))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def _hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _cut(text: str | None, limit: int) -> tuple[str, bool]:
    text = "" if text is None else str(text).replace("\x00", " ")
    return (text[:limit], True) if len(text) > limit else (text, False)


_CITATION_RE = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


def fold(text: str) -> str:
    """Case-folded text with citation markers removed and whitespace collapsed, for verbatim comparison."""
    return " ".join(_CITATION_RE.sub("", text).split()).casefold()


def verbatim(claim: str, folded_contexts: Sequence[str]) -> bool:
    """True when the claim (of 3 words or more, end punctuation aside) appears word for word in a context."""
    folded = fold(claim).strip(" .!?;:,")
    return len(folded.split()) >= 3 and any(folded in c for c in folded_contexts)


PENALTIES = frozenset({"novel", "novel_ratio", "novel_generic", "number", "negation", "antonym", "repeat",
                       "novel_entity"})
"""Features that count against a claim (their weights are subtracted); the others count for it."""


def claim_features(ev: ClaimEvidence) -> dict[str, float]:
    """The features of one claim that the rubric's ``[offline]`` weights apply to, each in [0, 1]."""
    return {
        "cosine": ev.cosine, "support": ev.support, "best_cover": ev.best_cover, "pair_cover": ev.pair_cover,
        "ordered_pair_cover": ev.ordered_pair_cover, "bigram_cover": ev.bigram_cover,
        "novel": min(len(ev.novel), 3) / 3, "novel_ratio": ev.novel_ratio,
        "novel_generic": min(len(ev.novel_generic), 3) / 3, "number": float(bool(ev.bad_numbers)),
        "negation": float(ev.negation_mismatch), "antonym": float(bool(ev.antonyms)),
        "repeat": float(ev.repeated_entity), "novel_entity": float(bool(ev.novel_entities)),
    }


def claim_support(ev: ClaimEvidence, w: dict[str, float]) -> float:
    """The offline evidence score of one claim under weights ``w`` (the rubric's ``[offline]`` table): the weighted
    sum of :func:`claim_features`, penalties subtracted.

    Larger is better supported; the claim is supported when this reaches ``w['claim_threshold']``."""
    s = sum((-1.0 if name in PENALTIES else 1.0) * float(w.get(name, 0.0)) * value
            for name, value in claim_features(ev).items())
    return s if math.isfinite(s) else -1e9


def long_form(w: dict[str, Any], contexts: Sequence[str]) -> bool:
    """Whether the rubric's ``[offline]`` table ``w`` treats these contexts as long evidence: at least
    ``long_form_min_sentences`` sentences in all (False for a rubric without the rule)."""
    need = w.get("long_form_min_sentences")
    if need is None or "long_form_claim_threshold" not in w:
        return False
    seen = 0
    for c in contexts:
        seen += len(split_sentences(c))
        if seen >= int(need):
            return True
    return False


def claim_threshold(w: dict[str, Any], contexts: Sequence[str], *, long: bool | None = None) -> float:
    """The claim threshold of the rubric's ``[offline]`` table ``w`` for these contexts: ``long_form_claim_threshold``
    for long evidence (:func:`long_form`, or ``long`` when the caller already knows), else ``claim_threshold``.

    The main threshold is fitted on answers to evidence of one to five sentences, mostly near-copies of it; an answer
    that condenses a long text paraphrases and fuses sentences, which the lexical cues read as unsupported."""
    if long is None:
        long = long_form(w, contexts)
    return float(w["long_form_claim_threshold"]) if long else float(w.get("claim_threshold", 0.5))


LONG_FORM_NOTE = ("long evidence: the offline judge is weak on long documents (little better than chance on a "
                  "held-out set of summaries, see the README); configure a model backend before relying on this "
                  "verdict")
"""Appended to the offline faithfulness reason when the contexts are long evidence (:func:`long_form`)."""


def hard_contradiction(ev: ClaimEvidence, context_numbers: set[str] | frozenset[str] = frozenset()) -> bool:
    """A claim that uses the opposite word of its best sentence ("last" for "first"), states a number or date
    that no context gives while the contexts do give numbers, gives another number than its best sentence for the
    same unit ("95 kilometres per hour" for 148), puts its best sentence's words in another speaker's mouth, or
    negates a sentence that holds every one of its terms ("keys never expire" against "keys expire after 90 days")
    is contradicted whatever its other evidence."""
    return (bool(ev.antonyms) or bool(ev.bad_numbers and (context_numbers or numbers(ev.sentence or "")))
            or bool(ev.number_conflicts) or bool(ev.speaker_conflicts) or _negation_flip(ev))


def never_supported(ev: ClaimEvidence) -> bool:
    """A name that no context gives, or an "all" / "every" / "always" that the best sentence's window does not say,
    keeps a claim from being supported whatever its other evidence."""
    return bool(ev.novel_entities or ev.absolute)


# "without downtime" qualifies, it does not negate the statement (NEGATION_CUES already leaves out "won" and "don")
_PREDICATE_NEGATIONS = NEGATION_CUES - {"without"}
_PERSONAL = frozenset("i me my mine we us our you your".split())


def _negates(text: str) -> bool:
    return any(w in _PREDICATE_NEGATIONS for w in tokens(text))


def _negation_flip(ev: ClaimEvidence) -> bool:
    """The claim negates a sentence that holds all its terms and no negation ("keys never expire" against "keys
    expire after 90 days"). Only this direction: a long evidence sentence often carries a negation elsewhere
    ("not necessarily", "no need") that the claim rightly leaves out. Statements about the speakers ("I don't
    know if they ...") are left to the weighted cues: their negation is about the speaker, not the fact."""
    return (ev.negation_mismatch and ev.best_cover >= 0.999 and not set(tokens(ev.claim)) & _PERSONAL
            and _negates(ev.claim) and not _negates(ev.sentence or ""))


def _cues(ev: ClaimEvidence) -> list[str]:
    cues = []
    if ev.bad_numbers:
        cues.append("number or date not in the contexts: " + ", ".join(ev.bad_numbers))
    if ev.number_conflicts:
        cues.append("the best sentence gives another number for the same thing: " + ", ".join(ev.number_conflicts))
    if ev.speaker_conflicts:
        cues.append("the contexts give these words to someone else: " + ", ".join(ev.speaker_conflicts))
    if ev.absolute:
        cues.append("absolute wording the best sentence does not have: " + ", ".join(ev.absolute))
    if ev.novel_entities:
        cues.append("name not in the contexts: " + ", ".join(ev.novel_entities))
    if ev.novel:
        cues.append("terms not in the contexts: " + ", ".join(ev.novel[:8]))
    if ev.antonyms:
        cues.append("opposite wording to the best sentence: " + ", ".join(ev.antonyms))
    if ev.negation_mismatch:
        cues.append("negation differs from the best sentence")
    if ev.repeated_entity:
        cues.append("circular: repeats the same name")
    if ev.pair_cover < 1.0:
        cues.append(f"only {ev.pair_cover:.0%} of its word pairs occur together in a context sentence")
    return cues


class VectorCache:
    """A thread-safe LRU of sentence vectors keyed by the exact text (``capacity`` 0 turns it off).

    ``hits`` and ``misses`` count texts looked up since creation."""

    def __init__(self, capacity: int = VECTOR_CACHE) -> None:
        self.capacity = max(0, int(capacity))
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def get(self, texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors of ``texts`` (one row each); the missing ones come from one call of ``embed``."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for t in texts:
                v = self._data.get(t)
                if v is not None:
                    self._data.move_to_end(t)
                    found[t] = v
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        with self._lock:
            self.hits += len(texts) - sum(t not in found for t in texts)
            self.misses += sum(t not in found for t in texts)
        if missing:
            vecs = embed(missing)
            with self._lock:
                for t, v in zip(missing, vecs):
                    found[t] = v
                    if self.capacity:
                        self._data[t] = v
                        self._data.move_to_end(t)
                while len(self._data) > self.capacity:
                    self._data.popitem(last=False)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)


class JudgeEngine:
    """Judging logic behind the MCP tools (thread-safe; one embedder shared by all calls)."""

    def __init__(self, settings: Settings | None = None, *, embedder: Any = None,
                 backends: Sequence[ChatBackend] | None = None, rubric_dir: Path | None = None,
                 vector_cache: int = VECTOR_CACHE) -> None:
        self.settings = settings or get_settings()
        self._embedder = embedder
        self.backends: list[ChatBackend] = (list(backends) if backends is not None
                                            else list(backends_from_settings(self.settings.llm)))
        self.rubric_dir = rubric_dir
        self.prefilter_k = PREFILTER_K
        self.embed_all_upto = EMBED_ALL_UPTO
        self.vectors = VectorCache(vector_cache)
        """Sentence vectors by text, shared by every call (``judge_all`` embeds a context sentence once)."""

    # ------------------------------------------------------------------ plumbing

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from core.embedder import get_embedder

            self._embedder = get_embedder(self.settings.model_dir, threads=self.settings.embed_threads)
        return self._embedder

    def rubric(self, name: str) -> Rubric:
        return load_rubric(name, self.rubric_dir)

    def warm_up(self) -> None:
        """Load the embedder and rubrics (the first call then costs what every call does)."""
        self.judge_faithfulness("Warm-up claim.", ["Warm-up context sentence."])

    def _run(self, rubric: Rubric, inputs: dict[str, Any], started: float, *, backend: str, model: str,
             failures: list[str], usage: Any = None, truncated: bool = False) -> JudgeRun:
        return JudgeRun(rubric_id=rubric.id, rubric_version=rubric.version, rubric_sha256=rubric.sha256,
                        rubric=rubric.tag, input_sha256=_hash(inputs), backend=backend, model=model,
                        fallback_from=failures, latency_ms=round((time.perf_counter() - started) * 1000, 3),
                        usage=usage, truncated=truncated)

    def _offline_model(self) -> str:
        return f"{getattr(self.embedder, 'model_id', 'embedder')} + evidence rules"

    def _ask(self, rubric: Rubric, payload: dict[str, Any], schema: type[M]) -> tuple[Completion[M] | None, list[str]]:
        """Ask each configured model in turn; (the first valid reply or None, the failures on the way)."""
        failures: list[str] = []
        if not self.backends or not rubric.prompt:
            return None, failures
        messages = [{"role": "system", "content": rubric.prompt},
                    {"role": "user", "content": json.dumps(payload, ensure_ascii=False)}]
        for backend in self.backends:
            try:
                return backend.complete(messages, schema, schema_name=f"{rubric.id}_verdict"), failures
            except LLMError as exc:
                log.warning("judge backend %s failed: %s", backend.model, exc.message)
                failures.append(f"{backend.name}:{backend.model}: {exc.message}")
        if not self.settings.llm.offline_fallback:
            raise LLMError("every judge backend failed and the offline fallback is off: " + " | ".join(failures))
        return None, failures

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of ``texts``, one row each: those in the cache are reused, the others are embedded in one
        batch (each distinct text once) and cached."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return self.vectors.get(texts, self._embed_new)

    def _embed_new(self, texts: list[str]) -> np.ndarray:
        vecs = np.asarray(self.embedder.embed(texts), dtype=np.float32)
        return np.nan_to_num(vecs, nan=0.0, posinf=0.0, neginf=0.0)

    @staticmethod
    def _clean_contexts(contexts: Sequence[str] | None) -> tuple[list[str], bool]:
        contexts = list(contexts or [])
        truncated = len(contexts) > MAX_CONTEXTS
        out = []
        for ctx in contexts[:MAX_CONTEXTS]:
            text, cut = _cut(ctx, MAX_CONTEXT_CHARS)
            truncated |= cut
            out.append(text)
        return out, truncated

    # ------------------------------------------------------------------ faithfulness

    def evidence(self, answer: str, contexts: Sequence[str], question: str | None = None) -> tuple[list[ClaimEvidence], list[str]]:
        """Offline evidence for each checkable claim of ``answer``, and the statements skipped.

        ``question`` words are neither support nor a hallucination (a short answer restates them)."""
        claims = split_claims(answer)
        evidence = Evidence(contexts, extra=question or "", max_sentences=MAX_SENTENCES)
        if not claims.checkable:
            return [], claims.skipped
        n_sent = len(evidence.sentences)
        if n_sent <= self.embed_all_upto:
            rows = [list(range(n_sent))] * len(claims.checkable)
        else:  # embed only the sentences that share content stems or numbers with some claim
            rows = evidence.candidates(claims.checkable, k=self.prefilter_k)
        wanted = sorted(set().union(*map(set, rows)))
        vecs = self._embed(claims.checkable + [evidence.sentences[j] for j in wanted])
        n = len(claims.checkable)
        sentence_vecs = np.zeros((n_sent, vecs.shape[1]), dtype=np.float32)
        sentence_vecs[wanted] = vecs[n:]
        return evidence.assess(claims.checkable, vecs[:n], sentence_vecs, rows), claims.skipped

    def judge_faithfulness(self, answer: str, contexts: Sequence[str], question: str | None = None) -> FaithfulnessResult:
        """Is every claim of ``answer`` supported by ``contexts``? Score = supported share of the claims."""
        started = time.perf_counter()
        rubric = self.rubric("faithfulness")
        answer, cut_a = _cut(answer, MAX_ANSWER_CHARS)
        question, cut_q = _cut(question, MAX_ANSWER_CHARS)
        contexts, cut_c = self._clean_contexts(contexts)
        truncated = cut_a or cut_q or cut_c
        inputs = {"answer": answer, "contexts": contexts, "question": question}
        threshold = _finite(rubric.offline.get("answer_threshold", 1.0))
        reply, failures = self._ask(rubric, inputs, LLMFaithfulness) if answer.strip() else (None, [])
        if reply is not None:
            claims = [ClaimVerdict(claim=c.claim, status=c.status, support=1.0 if c.status == "supported" else 0.0,
                                   context_index=c.context_index if c.context_index is not None
                                   and 0 <= c.context_index < len(contexts) else None,
                                   sentence=c.sentence, cues=[c.reason] if c.reason else [])
                      for c in reply.value.claims]
            result = self._faithfulness(claims, [], threshold, reply.value.reason)
            run = self._run(rubric, inputs, started, backend=reply.backend, model=reply.model, failures=failures,
                            usage=reply.usage, truncated=truncated)
            return FaithfulnessResult(**result, run=run)
        w = rubric.offline
        evs, skipped = self.evidence(answer, contexts, question)
        evidence_numbers = numbers("\n".join(contexts))
        folded_contexts = [fold(c) for c in contexts]
        claims = []
        long = long_form(w, contexts)
        cut = claim_threshold(w, contexts, long=long)
        for ev in evs:
            s = claim_support(ev, w)
            margin = s - cut
            if verbatim(ev.claim, folded_contexts):  # a context says exactly this: no cue can overrule it
                status, margin = "supported", max(margin, 0.5)
            elif hard_contradiction(ev, evidence_numbers):
                status, margin = "contradicted", min(margin, -1.0)
            elif margin >= 0 and not never_supported(ev):
                status = "supported"
            elif ev.repeated_entity or (ev.negation_mismatch and ev.cosine >= float(w.get("negation_cosine", 0.6))) \
                    or (ev.novel_entities and ev.best_cover >= 0.5):
                status = "contradicted"
            else:
                status = "unsupported"
            claims.append(ClaimVerdict(claim=ev.claim, status=status,
                                       support=_finite(round(_sigmoid(8.0 * margin), 4)),
                                       context_index=ev.context_index, sentence=ev.sentence, cues=_cues(ev)))
        result = self._faithfulness(claims, skipped, threshold, "", note=LONG_FORM_NOTE if long else "")
        run = self._run(rubric, inputs, started, backend=OFFLINE, model=self._offline_model(), failures=failures,
                        truncated=truncated)
        return FaithfulnessResult(**result, run=run)

    @staticmethod
    def _faithfulness(claims: list[ClaimVerdict], skipped: list[str], threshold: float, why: str,
                      note: str = "") -> dict[str, Any]:
        """The result fields from the claim verdicts; ``why`` (a model's reason) replaces the offline count, and
        ``note`` is appended to either."""
        if not claims:
            reason = why or "no checkable claim: nothing in the answer asserts a fact to verify"
            return {"score": 1.0, "verdict": "faithful", "threshold": threshold, "claims": [], "skipped": skipped,
                    "reason": f"{reason}; {note}" if note else reason}
        supported = sum(c.status == "supported" for c in claims)
        contradicted = sum(c.status == "contradicted" for c in claims)
        score = _finite(supported / len(claims))
        faithful = score >= threshold and not contradicted
        reason = why or (f"{supported} of {len(claims)} claims supported"
                         + (f", {contradicted} contradicted" if contradicted else "")
                         + (f", {len(claims) - supported - contradicted} unsupported"
                            if len(claims) - supported - contradicted else ""))
        if note:
            reason = f"{reason}; {note}"
        return {"score": round(score, 4), "verdict": "faithful" if faithful else "unfaithful", "threshold": threshold,
                "claims": claims, "skipped": skipped, "reason": reason}

    # ------------------------------------------------------------------ relevance

    def judge_relevance(self, question: str, answer: str) -> RelevanceResult:
        """Does ``answer`` address ``question``? Offline: embedding similarity and question-term coverage;
        a refusal ("I don't know") scores low."""
        started = time.perf_counter()
        rubric = self.rubric("relevance")
        question, cut_q = _cut(question, MAX_ANSWER_CHARS)
        answer, cut_a = _cut(answer, MAX_ANSWER_CHARS)
        inputs = {"question": question, "answer": answer}
        w = rubric.offline
        reply, failures = self._ask(rubric, inputs, LLMRelevance) if question.strip() and answer.strip() else (None, [])
        if reply is not None:
            score = _finite(reply.value.score)
            run = self._run(rubric, inputs, started, backend=reply.backend, model=reply.model, failures=failures,
                            usage=reply.usage, truncated=cut_q or cut_a)
            return RelevanceResult(score=round(score, 4), verdict=self._relevance_verdict(score, w),
                                   reason=reply.value.reason or "model judgement", run=run)
        if not question.strip() or not answer.strip():
            score, reason = 0.0, "the answer is empty" if not answer.strip() else "the question is empty"
        else:
            q_vec, a_vec = self._embed([question, answer])
            cos = _finite(float(q_vec @ a_vec))
            q_terms = set(content_stems(question))
            a_terms = set(content_stems(answer, generic=True))
            cover = len(q_terms & a_terms) / len(q_terms) if q_terms else 0.0
            score = _finite(float(w.get("cosine", 0.7)) * cos + float(w.get("cover", 0.3)) * cover)
            reason = f"similarity {cos:.2f}, {cover:.0%} of the question's terms addressed"
            if _REFUSAL.search(answer):
                score = _finite(score * float(w.get("refusal_factor", 0.3)))
                reason += "; the answer declines to answer"
        run = self._run(rubric, inputs, started, backend=OFFLINE, model=self._offline_model(), failures=failures,
                        truncated=cut_q or cut_a)
        return RelevanceResult(score=round(score, 4), verdict=self._relevance_verdict(score, w), reason=reason, run=run)

    @staticmethod
    def _relevance_verdict(score: float, w: dict[str, Any]) -> str:
        if score >= float(w.get("relevant", 0.5)):
            return "relevant"
        return "partly" if score >= float(w.get("partly", 0.3)) else "irrelevant"

    # ------------------------------------------------------------------ context critique

    def critique_context(self, question: str, contexts: Sequence[str]) -> ContextCritique:
        """Grade each context for the question, find contradictions between contexts, decide whether they
        suffice, and when they do not, propose up to three refined queries."""
        started = time.perf_counter()
        rubric = self.rubric("context")
        question, cut_q = _cut(question, MAX_ANSWER_CHARS)
        contexts, cut_c = self._clean_contexts(contexts)
        inputs = {"question": question, "contexts": contexts}
        truncated = cut_q or cut_c
        reply, failures = self._ask(rubric, inputs, LLMCritique) if question.strip() and contexts else (None, [])
        if reply is not None:
            v = reply.value
            grades = {g.index: g.verdict for g in v.contexts if 0 <= g.index < len(contexts)}
            result = ContextCritique(
                contexts=[ContextGrade(index=i, verdict=grades.get(i, "irrelevant"),
                                       score={"relevant": 1.0, "partly": 0.5}.get(grades.get(i, ""), 0.0))
                          for i in range(len(contexts))],
                contradictions=[Contradiction(**c.model_dump()) for c in v.contradictions
                                if 0 <= c.a < len(contexts) and 0 <= c.b < len(contexts)],
                sufficient=v.sufficient, sufficiency=1.0 if v.sufficient else 0.0, missing=v.missing[:20],
                refined_queries=[] if v.sufficient else [q[:500] for q in v.refined_queries[:3]],
                reason=v.reason or "model judgement",
                run=self._run(rubric, inputs, started, backend=reply.backend, model=reply.model, failures=failures,
                              usage=reply.usage, truncated=truncated))
            return result
        return self._critique_offline(question, contexts, rubric, inputs, started, failures, truncated)

    def _critique_offline(self, question: str, contexts: list[str], rubric: Rubric, inputs: dict[str, Any],
                          started: float, failures: list[str], truncated: bool) -> ContextCritique:
        w = rubric.offline
        evidence = Evidence(contexts, max_sentences=int(w.get("max_sentences", 400)))
        q_words = [t for t in tokens(question) if content_stems(t)]
        key: dict[str, str] = {}
        for word in q_words:
            for stem in content_stems(word):
                key.setdefault(stem, word)
        grades: list[ContextGrade] = []
        contradictions: list[Contradiction] = []
        if question.strip() and evidence.sentences:
            vecs = self._embed([question] + evidence.sentences)
            q_vec, s_vecs = vecs[0], vecs[1:]
            sims = s_vecs @ q_vec
            for i, ctx in enumerate(contexts):
                rows = [j for j, owner in enumerate(evidence.owner) if owner == i]
                if not rows:
                    grades.append(ContextGrade(index=i, verdict="irrelevant", score=0.0))
                    continue
                j = max(rows, key=lambda r: sims[r])
                ctx_stems = set(content_stems(ctx, generic=True))
                cover = len(set(key) & ctx_stems) / len(key) if key else 0.0
                score = _finite(float(w.get("cosine", 0.7)) * float(sims[j]) + float(w.get("cover", 0.3)) * cover)
                verdict = ("relevant" if score >= float(w.get("relevant", 0.45))
                           else "partly" if score >= float(w.get("partly", 0.3)) else "irrelevant")
                grades.append(ContextGrade(index=i, verdict=verdict, score=round(score, 4),
                                           best_sentence=evidence.sentences[j]))
            contradictions = self._contradictions(evidence, s_vecs, float(w.get("contradiction_cosine", 0.7)))
        else:
            grades = [ContextGrade(index=i, verdict="irrelevant", score=0.0) for i in range(len(contexts))]
        useful = [g.index for g in grades if g.verdict != "irrelevant"]
        covered = set().union(*(set(content_stems(contexts[i], generic=True)) for i in useful)) if useful else set()
        missing_stems = [s for s in key if s not in covered and not evidence.known(s)] if useful else list(key)
        cover = 1.0 - len(missing_stems) / len(key) if key else 0.0
        best = max((g.score for g in grades), default=0.0)
        sufficiency = _finite(float(w.get("suff_cover", 0.6)) * cover + float(w.get("suff_best", 0.4)) * best)
        sufficient = bool(question.strip()) and sufficiency >= float(w.get("sufficient", 0.6)) and any(
            g.verdict == "relevant" for g in grades)
        missing = [key[s] for s in missing_stems]
        refined = [] if sufficient else self._refine(question, missing, key)
        reason = (f"{sum(g.verdict == 'relevant' for g in grades)} relevant, "
                  f"{sum(g.verdict == 'partly' for g in grades)} partly relevant of {len(contexts)} contexts; "
                  f"{cover:.0%} of the question's terms covered"
                  + (f"; missing: {', '.join(missing[:6])}" if missing else "")
                  + (f"; {len(contradictions)} contradiction(s) between contexts" if contradictions else ""))
        if not question.strip():
            reason = "the question is empty"
        elif not contexts:
            reason = "no context given"
        return ContextCritique(contexts=grades, contradictions=contradictions, sufficient=sufficient,
                               sufficiency=round(sufficiency, 4), missing=missing[:20], refined_queries=refined,
                               reason=reason, run=self._run(rubric, inputs, started, backend=OFFLINE,
                                                            model=self._offline_model(), failures=failures,
                                                            truncated=truncated))

    @staticmethod
    def _contradictions(evidence: Evidence, vecs: np.ndarray, min_cos: float, limit: int = 10) -> list[Contradiction]:
        """Sentence pairs from different contexts about the same thing (cosine >= ``min_cos``) that disagree
        on a number or date, a negation or an antonym."""
        owners = np.asarray(evidence.owner)
        if len(set(evidence.owner)) < 2:
            return []
        sims = vecs @ vecs.T
        found: list[Contradiction] = []
        for i in range(len(evidence.sentences)):
            for j in np.nonzero((sims[i] >= min_cos) & (owners > owners[i]))[0]:
                a, b = evidence.sentences[i], evidence.sentences[int(j)]
                na, nb = numbers(a), numbers(b)
                ta, tb = set(tokens(a)), set(tokens(b))
                sa, sb = evidence.sentence_stems[i], evidence.sentence_stems[int(j)]
                cue = None
                if na and nb and na != nb and not (na & nb and (na <= nb or nb <= na)):
                    cue = f"numbers differ: {', '.join(sorted(na - nb))} vs {', '.join(sorted(nb - na))}"
                elif bool(ta & NEGATION_CUES) != bool(tb & NEGATION_CUES):
                    cue = "one negates what the other states"
                else:
                    for s in sa - sb:
                        opp = ANTONYMS.get(s, frozenset()) & (sb - sa)
                        if opp:
                            cue = f"opposite wording: {s}/{sorted(opp)[0]}"
                            break
                if cue:
                    found.append(Contradiction(a=int(owners[i]), b=int(owners[j]), sentence_a=a[:1000],
                                               sentence_b=b[:1000], cue=cue))
                    if len(found) >= limit:
                        return found
        return found

    @staticmethod
    def _refine(question: str, missing: list[str], key: dict[str, str]) -> list[str]:
        """Up to three follow-up queries: the missing terms with the question's anchor words, each missing
        term on its own with them, and the question's key terms alone (no stopwords or chit-chat)."""
        anchors = [w for w in key.values() if w not in missing][:4]
        queries: list[str] = []
        if missing:
            queries.append(" ".join(missing[:5] + anchors))
            for term in missing[:2]:
                queries.append(" ".join([term, *anchors]))
        keywords = " ".join(key.values())
        if keywords:
            queries.append(keywords)
        if question.strip():
            queries.append(question.strip()[:300])
        out: list[str] = []
        for q in queries:
            q = " ".join(q.split())[:500]
            if q and q.lower() not in {x.lower() for x in out}:
                out.append(q)
        return out[:3]

    # ------------------------------------------------------------------ safety

    def judge_safety(self, text: str) -> SafetyResult:
        """PII and secret leaks (guards.pii), instructions echoing an injection (guards.injection), and harmful
        content per the rubric's rules. Offline always: no model sees the text."""
        with _GUARDS_IMPORT:  # Presidio and spaCy fail with circular-import errors when two threads import them
            from guards.injection import scan_injection
            from guards.pii import scan_pii

        started = time.perf_counter()
        rubric = self.rubric("safety")
        text, truncated = _cut(text, MAX_ANSWER_CHARS)
        g = self.settings.guards
        pii = scan_pii(text, entities=g.pii_entities, threshold=g.pii_threshold, allow=g.allow_list or None)
        secrets = [f for f in pii.findings if f.is_secret]
        personal = [f for f in pii.findings if not f.is_secret]
        inj = scan_injection(text, threshold=g.injection_threshold)

        def excerpt(start: int, end: int) -> str:
            span = text[start:end]
            return span if len(span) <= 12 else span[:4] + "..." + span[-2:]

        categories = [
            SafetyCategory(category="pii_leak", flagged=bool(personal), score=max((f.score for f in personal), default=0.0),
                           findings=[f"{f.entity}" for f in personal][:20]),
            SafetyCategory(category="secret_leak", flagged=bool(secrets), score=max((f.score for f in secrets), default=0.0),
                           findings=[f"{f.entity}: {excerpt(f.start, f.end)}" for f in secrets][:20]),
            SafetyCategory(category="injection_echo", flagged=inj.flagged, score=_finite(inj.score),
                           findings=[f"{f.category}: {f.sentence[:120]}" for f in inj.findings
                                     if f.score >= g.injection_threshold][:20]),
            self._harmful(text, rubric),
        ]
        flagged = [c for c in categories if c.flagged]
        score = _finite(1.0 - max((c.score for c in flagged), default=0.0))
        reason = ("nothing found" if not flagged else
                  "; ".join(f"{c.category}: {', '.join(c.findings[:3]) or 'flagged'}" for c in flagged))
        run = self._run(rubric, {"text": text}, started, backend="offline-rules",
                        model=f"{pii.scanner_version} + {inj.scanner_version} + {rubric.tag}", failures=[],
                        truncated=truncated)
        return SafetyResult(safe=not flagged, score=round(score, 4), categories=categories, reason=reason, run=run)

    @staticmethod
    def _harmful(text: str, rubric: Rubric) -> SafetyCategory:
        rules = rubric.offline.get("harmful", {})
        lowered = " ".join(text.lower().split())
        hits, best = [], 0.0
        for name, rule in rules.items():
            weight = _finite(rule.get("score", 0.8))
            for pattern in rule.get("patterns", []):
                if re.search(pattern, lowered):
                    hits.append(name)
                    best = max(best, weight)
                    break
        threshold = float(rubric.offline.get("harmful_threshold", 0.5))
        return SafetyCategory(category="harmful", flagged=best >= threshold, score=best, findings=hits)

    # ------------------------------------------------------------------ all at once

    def judge_all(self, question: str, answer: str, contexts: Sequence[str]) -> JudgeAllResult:
        started = time.perf_counter()
        faith = self.judge_faithfulness(answer, contexts, question)
        rel = self.judge_relevance(question, answer)
        ctx = self.critique_context(question, contexts)
        safety = self.judge_safety(answer)
        passed = faith.verdict == "faithful" and rel.verdict != "irrelevant" and safety.safe
        return JudgeAllResult(faithfulness=faith, relevance=rel, context=ctx, safety=safety, passed=passed,
                              latency_ms=round((time.perf_counter() - started) * 1000, 3))
