"""Pydantic models shared across servers and the client."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

#: chunk metadata keys a stored guard scan occupies (reserved: callers cannot set them); see guards.policy
GUARD_METADATA_KEYS = ("guard_scanner", "guard_hash", "guard_score", "guard_truncated", "guard_findings")


class GuardFinding(BaseModel):
    """One thing a guard found in a piece of text."""

    category: str = Field(description="What was found, e.g. 'instruction_override' or 'EMAIL_ADDRESS'.")
    start: int = Field(description="Start offset of the span in the text.")
    end: int = Field(description="End offset of the span in the text.")
    score: float = Field(ge=0, le=1)
    sentence: str | None = Field(None, description="The sentence the finding came from.")


class GuardVerdict(BaseModel):
    """The verdict of the guards on a piece of text. It travels with the text it describes."""

    status: Literal["unscanned", "clean", "flagged", "quarantined", "redacted", "blocked"] = Field(
        "unscanned",
        description="'unscanned' until the guards have looked; 'clean' nothing found; 'flagged' found and returned "
        "as is (or only partly scanned); 'quarantined' instruction spans neutralised; 'redacted' PII/secrets/links "
        "rewritten; 'blocked' the text is withheld.",
    )
    policy: str | None = Field(None, description="The policy that produced the verdict (id@version).")
    findings: list[GuardFinding] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorInfo(BaseModel):
    """An explicit error object, used instead of a result when a step cannot produce one."""

    code: str = Field(description="Stable machine-readable code, e.g. 'invalid_input', 'not_found'.")
    message: str = Field(description="What went wrong and what to do about it.")
    details: dict[str, Any] = Field(default_factory=dict)
