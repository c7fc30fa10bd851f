"""guardrag judge MCP server: faithfulness, relevance, context critique and safety as tools.

A thin adapter over :class:`servers.judge.engine.JudgeEngine`: typed tool signatures,
docstrings for the model, a readable text part with the structured result, and errors
as MCP tool errors. Offline by default (an evidence-based judge on a local sentence
embedder); with ``GUARDRAG_LLM__*`` set, an OpenAI-compatible model judges first and
the offline judge takes over when it fails. Every result names its rubric (id, version,
SHA-256) and the backend that produced it.

Run: ``guardrag serve judge`` (stdio) or ``guardrag serve judge --http --port 8766``.
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from core.settings import Settings, get_settings
from servers.common import READ_ONLY, call_engine, serve_main, tool_result
from servers.judge.engine import JudgeEngine
from servers.judge.schemas import (
    ContextCritique,
    FaithfulnessResult,
    JudgeAllResult,
    RelevanceResult,
    SafetyResult,
)

T = TypeVar("T")
log = logging.getLogger("guardrag.judge")


MAX_TEXT = 100_000
"""Longest answer, question or text a tool accepts (the judge reads the first 20,000 characters)."""

Answer = Annotated[str, Field(description="The answer to judge.", max_length=MAX_TEXT)]
Question = Annotated[str, Field(description="The user's question.", max_length=MAX_TEXT)]
Contexts = Annotated[
    list[Annotated[str, Field(max_length=MAX_TEXT)]],
    Field(description="The retrieved passages the answer should rest on (at most 50).", max_length=50),
]


def _claims_text(result: FaithfulnessResult) -> list[str]:
    lines = []
    for n, c in enumerate(result.claims, start=1):
        where = f" [context {c.context_index}]" if c.context_index is not None else ""
        lines.append(f"  {n}. {c.status.upper()}{where}: {c.claim}")
        if c.status != "supported" and c.cues:
            lines.append(f"     why: {'; '.join(c.cues[:3])}")
    return lines


def _run_text(run: Any) -> str:
    text = f"({run.rubric}, {run.backend}: {run.model}, {run.latency_ms:.0f} ms"
    if run.usage:
        text += f", {run.usage.total_tokens} tokens"
    if run.fallback_from:
        text += f", after {len(run.fallback_from)} failed backend(s)"
    return text + ")"


def render(result: BaseModel) -> str:
    """The readable text part of a judge result (the structured part carries every field)."""
    if isinstance(result, FaithfulnessResult):
        return "\n".join([f"faithfulness {result.score:.2f} -> {result.verdict} (threshold {result.threshold:.2f}): "
                          f"{result.reason} {_run_text(result.run)}", *_claims_text(result)])
    if isinstance(result, RelevanceResult):
        return f"relevance {result.score:.2f} -> {result.verdict}: {result.reason} {_run_text(result.run)}"
    if isinstance(result, ContextCritique):
        lines = [f"context {'sufficient' if result.sufficient else 'INSUFFICIENT'} "
                 f"(sufficiency {result.sufficiency:.2f}): {result.reason} {_run_text(result.run)}"]
        lines += [f"  [{g.index}] {g.verdict} ({g.score:.2f})" for g in result.contexts]
        lines += [f"  contradiction [{c.a}] vs [{c.b}]: {c.cue}" for c in result.contradictions]
        lines += [f"  refined query: {q}" for q in result.refined_queries]
        return "\n".join(lines)
    if isinstance(result, SafetyResult):
        return f"safety {'SAFE' if result.safe else 'UNSAFE'} ({result.score:.2f}): {result.reason} {_run_text(result.run)}"
    if isinstance(result, JudgeAllResult):
        return "\n".join([f"overall: {'PASS' if result.passed else 'FAIL'} ({result.latency_ms:.0f} ms)",
                          render(result.faithfulness), render(result.relevance), render(result.context),
                          render(result.safety)])
    return result.model_dump_json()


def _result(result: BaseModel) -> CallToolResult:
    return tool_result(result, render(result))


def build_server(settings: Settings | None = None, engine: JudgeEngine | None = None) -> MCPServer:
    """Create the judge MCP server (the embedder loads in the background)."""
    settings = settings or get_settings()
    engine = engine or JudgeEngine(settings)
    threading.Thread(target=engine.warm_up, name="warm-up", daemon=True).start()
    mcp = MCPServer(
        "guardrag-judge",
        version="0.1.0",
        instructions=(
            "Judging tools for retrieval-augmented answers. `critique_context` before answering (are the passages "
            "relevant, consistent, sufficient? if not, it proposes refined queries); `judge_faithfulness` after "
            "(is every claim of the answer supported by the passages?); `judge_relevance`, `judge_safety`, or "
            "`judge_all` for everything at once. Scores are in [0, 1], never NaN; each result names its rubric "
            "and the backend that judged."
        ),
        log_level=settings.log_level.upper(),  # type: ignore[arg-type]
    )

    @mcp.tool(annotations=READ_ONLY)
    async def judge_faithfulness(
        answer: Answer,
        contexts: Contexts,
        question: Annotated[str | None, Field(description="The question, if any: a short answer is read as the "
                                                          "answer to it (its words are neither support nor a "
                                                          "hallucination).", max_length=MAX_TEXT)] = None,
    ) -> FaithfulnessResult:
        """Check an answer against its contexts, claim by claim. The answer is split into atomic claims; each
        is 'supported' (with the context and sentence that support it), 'unsupported' or 'contradicted' (a
        different number, date or name, a negation or an opposite word), with the cues. score = share of
        supported claims; verdict 'faithful' when it reaches the rubric's threshold and nothing is
        contradicted. Statements about the speaker ("I love it too") are listed as skipped."""
        return _result(await call_engine(engine.judge_faithfulness, answer, contexts, question))

    @mcp.tool(annotations=READ_ONLY)
    async def judge_relevance(question: Question, answer: Answer) -> RelevanceResult:
        """Does the answer address the question (whatever its truth)? Score in [0, 1], verdict relevant /
        partly / irrelevant, and the reason. A refusal or an empty answer scores low."""
        return _result(await call_engine(engine.judge_relevance, question, answer))

    @mcp.tool(annotations=READ_ONLY)
    async def critique_context(question: Question, contexts: Contexts) -> ContextCritique:
        """Critique retrieved passages before answering: each context relevant / partly / irrelevant, the
        contradictions between contexts (numbers, negations, opposite words), whether together they suffice
        to answer, the question terms they miss and, when insufficient, up to three refined search queries
        to run next."""
        return _result(await call_engine(engine.critique_context, question, contexts))

    @mcp.tool(annotations=READ_ONLY)
    async def judge_safety(
        text: Annotated[str, Field(description="The text about to be shown or sent (usually an answer).",
                                   max_length=MAX_TEXT)],
    ) -> SafetyResult:
        """Policy check of a text before it leaves: PII leak, secret leak (keys, tokens, passwords), instructions
        that echo a prompt injection, and harmful content per the safety rubric. Each category is flagged or
        not with its findings; safe = nothing flagged."""
        return _result(await call_engine(engine.judge_safety, text))

    @mcp.tool(annotations=READ_ONLY)
    async def judge_all(question: Question, answer: Answer, contexts: Contexts) -> JudgeAllResult:
        """All judgements in one call: faithfulness of the answer to the contexts, relevance to the question,
        the context critique, and the safety of the answer. passed = faithful, not irrelevant, and safe."""
        return _result(await call_engine(engine.judge_all, question, answer, contexts))

    return mcp


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m servers.judge.server [--http] [--host H] [--port N]``."""
    serve_main(build_server, prog="guardrag-judge", description=__doc__.splitlines()[0], port=8766, argv=argv)


if __name__ == "__main__":
    main()
