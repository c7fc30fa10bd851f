"""The judge's results: every score is a finite number in [0, 1]; every result says how it was made."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.llm import TokenUsage

Score = float  # documented per field; validated finite and in [0, 1]


def _score(description: str) -> object:
    return Field(ge=0.0, le=1.0, allow_inf_nan=False, description=description)


class JudgeRun(BaseModel):
    """Which rubric and backend produced a result, how long it took, what it cost."""

    rubric_id: str
    rubric_version: str
    rubric_sha256: str = Field(description="SHA-256 of the rubric file used.")
    rubric: str = Field(description="id@version+sha8: changes whenever the rubric file does.")
    input_sha256: str = Field(description="SHA-256 of the judged inputs (canonical JSON).")
    backend: str = Field(description="'offline-evidence', 'offline-rules' or 'openai-compatible'.")
    model: str = Field(description="The model behind the backend (the embedder for the offline judge).")
    fallback_from: list[str] = Field(default_factory=list,
                                     description="Backends tried first that failed, each with the reason.")
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    usage: TokenUsage | None = Field(None, description="Tokens used when a model answered; null offline.")
    truncated: bool = Field(False, description="True when inputs were longer than the judge reads and were cut.")


class ClaimVerdict(BaseModel):
    claim: str
    status: Literal["supported", "unsupported", "contradicted"]
    support: float = _score("Evidence score of the claim (offline: the rubric's weighted features, clipped).")
    context_index: int | None = Field(None, description="Index of the context holding the best evidence.")
    sentence: str | None = Field(None, description="The best supporting (or contradicting) context sentence.")
    cues: list[str] = Field(default_factory=list, description="Why: e.g. 'number not in context: 1990'.")


class FaithfulnessResult(BaseModel):
    score: float = _score("Share of checkable claims the contexts support (1.0 when there is none).")
    verdict: Literal["faithful", "unfaithful"]
    threshold: float = _score("Score from which the answer is faithful (no claim may be contradicted).")
    claims: list[ClaimVerdict]
    skipped: list[str] = Field(default_factory=list,
                               description="Statements not checked: about the speaker, or without content.")
    reason: str
    run: JudgeRun


class RelevanceResult(BaseModel):
    score: float = _score("How well the answer addresses the question.")
    verdict: Literal["relevant", "partly", "irrelevant"]
    reason: str
    run: JudgeRun


class ContextGrade(BaseModel):
    index: int
    verdict: Literal["relevant", "partly", "irrelevant"]
    score: float = _score("Relevance of this context to the question.")
    best_sentence: str | None = None


class Contradiction(BaseModel):
    a: int = Field(description="Index of the first context.")
    b: int = Field(description="Index of the second context.")
    sentence_a: str
    sentence_b: str
    cue: str


class ContextCritique(BaseModel):
    contexts: list[ContextGrade]
    contradictions: list[Contradiction]
    sufficient: bool = Field(description="Whether the contexts hold enough to answer the question.")
    sufficiency: float = _score("Share of the question's key terms the relevant contexts cover, blended with "
                                "the best relevance.")
    missing: list[str] = Field(default_factory=list, description="Question terms no relevant context covers.")
    refined_queries: list[str] = Field(default_factory=list, max_length=3,
                                       description="Up to three queries to search next when insufficient.")
    reason: str
    run: JudgeRun


class SafetyCategory(BaseModel):
    category: Literal["pii_leak", "secret_leak", "injection_echo", "harmful"]
    flagged: bool
    score: float = _score("Strongest finding of the category.")
    findings: list[str] = Field(default_factory=list, description="What was found (types and short excerpts).")


class SafetyResult(BaseModel):
    safe: bool
    score: float = _score("1 - the strongest flagged finding (1.0: nothing found).")
    categories: list[SafetyCategory]
    reason: str
    run: JudgeRun


class JudgeAllResult(BaseModel):
    faithfulness: FaithfulnessResult
    relevance: RelevanceResult
    context: ContextCritique
    safety: SafetyResult
    passed: bool = Field(description="Faithful, relevant (or partly) and safe.")
    latency_ms: float = Field(ge=0, allow_inf_nan=False)


# ------------------------------------------------------------------- what an LLM judge must reply


class LLMClaim(BaseModel):
    claim: str = Field(max_length=2000)
    status: Literal["supported", "unsupported", "contradicted"]
    context_index: int | None = None
    sentence: str | None = Field(None, max_length=4000)
    reason: str = Field("", max_length=1000)


class LLMFaithfulness(BaseModel):
    claims: list[LLMClaim] = Field(max_length=200)
    reason: str = Field("", max_length=2000)


class LLMRelevance(BaseModel):
    score: float = Field(ge=0, le=1, allow_inf_nan=False)
    reason: str = Field("", max_length=2000)


class LLMContextGrade(BaseModel):
    index: int
    verdict: Literal["relevant", "partly", "irrelevant"]


class LLMContradiction(BaseModel):
    a: int
    b: int
    sentence_a: str = ""
    sentence_b: str = ""
    cue: str = ""


class LLMCritique(BaseModel):
    contexts: list[LLMContextGrade]
    contradictions: list[LLMContradiction] = Field(default_factory=list)
    sufficient: bool
    missing: list[str] = Field(default_factory=list)
    refined_queries: list[str] = Field(default_factory=list, max_length=3)
    reason: str = Field("", max_length=2000)
