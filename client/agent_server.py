"""guardrag agent MCP server: the whole guarded RAG pipeline as one tool, ``ask`` (the "tool-hosting agent").

An IDE that mounts this server gets answers that were retrieved, critiqued, refined, guarded and judged
by the orchestrator (:mod:`client.pipeline`), which itself talks to the retrieval, graph and judge
servers over MCP (launched from this install over stdio, or as a servers file says). The server keeps
its MCP sessions to them open while it runs. Runs are stored like those of ``guardrag ask``: a run that
failed can be continued with ``resume_run`` here or ``guardrag runs resume`` on the command line.

Run: ``guardrag serve agent`` (stdio) or ``guardrag serve agent --http --port 8768``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.elicitation import (
    AcceptedElicitation,
    DeclinedElicitation,
    render_elicitation_schema,
)
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.request_state import RequestStateSecurity
from mcp.types import ToolAnnotations
from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, Field

import core  # noqa: F401  (offline switches first)
from client.pipeline import ApprovalRequest, Decision, Pipeline, RunResult, ServerPool
from core.errors import find_guardrag_error
from core.settings import Settings, get_settings
from servers.common import READ_ONLY, Collection, serve_main, tool_result

log = logging.getLogger("guardrag.agent")
T = TypeVar("T")

RUN = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
RunId = Annotated[str, Field(description="A run id, as returned by `ask` or `list_runs`.", min_length=1,
                             max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class RunBrief(BaseModel):
    run_id: str
    question: str
    status: str
    created_at: float
    updated_at: float
    steps: int


class RunList(BaseModel):
    runs: list[RunBrief]
    capped: bool = Field(description="True when there are more runs than `limit`.")


class ApprovalForm(BaseModel):
    """What the person is asked when a run's answer is held (the MCP elicitation form)."""

    approve: bool = Field(description="Release this answer to the user?")
    note: str = Field("", description="Why (kept in the audit trail).", max_length=2000)


APPROVAL_KEY = "approval"
MULTI_ROUND = "2026-07-28"


def approval_message(question: str, answer: str | None, reasons: list[str]) -> str:
    return (f"guardrag holds this answer for your approval ({'; '.join(reasons)}).\n\nQuestion: {question}\n\n"
            f"Answer: {answer or '(no answer text)'}\n\nRelease it?")


def _who(ctx: Context) -> str:
    """Who answered an elicitation: the MCP client's name as it introduced itself."""
    try:
        params = ctx.session.client_params
        info = getattr(params, "client_info", None)
        if info is not None:
            return f"mcp-client:{info.name}"
    except Exception as exc:  # noqa: BLE001 - a stateless request may carry no client info
        log.debug("no client info: %r", exc)
    return "mcp-client"


def _can_elicit(ctx: Context) -> bool:
    caps = ctx.client_capabilities
    return caps is not None and caps.elicitation is not None


def _multi_round(ctx: Context) -> bool:
    return ctx.protocol_version is not None and is_version_at_least(ctx.protocol_version, MULTI_ROUND)


def render(res: RunResult) -> str:
    """The readable text part of a run's result (the structured part carries every field)."""
    lines: list[str] = []
    ans = res.answer
    if ans is not None and ans.error is None and ans.text:
        lines.append(ans.text)
        lines += [f"[{c.n}] {c.source} (chunk {c.chunk_id}" + (f", chars {c.span[0]}-{c.span[1]})" if c.span else ")")
                  for c in ans.citations]
        lines.append(f"confidence {ans.confidence:.2f}, answered by {ans.backend}")
    elif ans is not None and ans.error is not None:
        lines.append(f"no answer: {ans.error.code}: {ans.error.message}")
    if res.output_guard is not None and res.output_guard.findings:
        cats = sorted({f.category for f in res.output_guard.findings})
        lines.append(f"output guard: {res.output_guard.status} ({', '.join(cats)})")
    if res.quarantined:
        lines.append(f"quarantined passages (instructions neutralised): {', '.join(res.quarantined)}")
    if res.withheld:
        lines.append("withheld passages: " + ", ".join(f"{w.chunk_id} ({w.source})" for w in res.withheld))
    if res.judge is not None and not res.judge.skipped:
        j = res.judge
        lines.append(f"judge {'PASS' if j.passed else 'FAIL'}: faithfulness {j.faithfulness:.2f} "
                     f"({j.faithfulness_verdict}), relevance {j.relevance:.2f} ({j.relevance_verdict}), "
                     f"safety {'safe' if j.safe else 'UNSAFE'}")
    if res.error is not None:
        lines.append(f"run {res.status}: {res.error.code}: {res.error.message}")
    lines.append(f"run {res.run_id} {res.status}, {res.tokens} tokens, steps: "
                 + ", ".join(s.name for s in res.steps))
    return "\n".join(lines)


async def _checked(fn: Callable[..., T | Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Call (and await) a pipeline method; a GuardragError (bad input, unknown run, run busy) becomes an MCP
    tool error."""
    try:
        res = fn(*args, **kwargs)
        return await res if inspect.isawaitable(res) else res  # type: ignore[return-value]
    except Exception as exc:
        found = find_guardrag_error(exc)
        if found is None:
            raise
        raise ToolError(f"{found.code}: {found.message}") from None


def build_server(settings: Settings | None = None, *, env: dict[str, str] | None = None) -> MCPServer:
    """Create the agent MCP server. ``env`` is added to the environment of the servers it launches."""
    settings = settings or get_settings()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        pipeline = Pipeline(settings, env=env)
        async with ServerPool(env=env, specs=pipeline.specs, timeout=settings.agent.deadline_s) as pool:
            pipeline.pool = pool
            state["pipeline"] = pipeline
            try:
                yield
            finally:
                state.pop("pipeline", None)
                pipeline.store.close()

    mcp = MCPServer(
        "guardrag-agent",
        version="0.1.0",
        instructions=(
            "A guarded retrieval-augmented answering agent over the user's indexed documents. Call `ask` with a "
            "question: it searches (hybrid + knowledge graph), checks the passages and searches again when they "
            "fall short, answers with numbered citations, redacts personal data and secrets, and judges the "
            "answer (faithfulness, relevance, safety). Passages carrying injected instructions are neutralised "
            "or withheld, never obeyed. A risky answer (financial, medical or legal topic, low faithfulness, a "
            "guard block) is held and the client is asked to approve it. A close enough earlier question is "
            "answered from the cache (marked cached). Each run is stored: `get_run`, `list_runs`, `resume_run`."
        ),
        log_level=settings.log_level.upper(),  # type: ignore[arg-type]
        lifespan=lifespan,
        # The approval round trip carries the run id in requestState: sealed (AES-GCM, process key, 10 min TTL)
        # so a client cannot settle a run it was not asked about.
        request_state_security=RequestStateSecurity.ephemeral(),
    )

    def _pipeline() -> Pipeline:
        if "pipeline" not in state:
            raise ToolError("unavailable: the agent is starting or stopping; try again")
        return state["pipeline"]

    def _progress(ctx: Context) -> Any:
        async def on_step(seq: int, name: str, replayed: bool) -> None:
            try:
                await ctx.report_progress(seq, None, f"{name}{' (replayed)' if replayed else ''}")
            except Exception as exc:  # noqa: BLE001 - progress is best effort
                log.debug("progress not sent: %r", exc)
        return on_step

    def _legacy_approver(ctx: Context) -> Any:
        """Clients on protocols before 2026-07-28 are asked mid-call (a server-to-client elicitation request)."""
        if _multi_round(ctx) or not _can_elicit(ctx):
            return None

        async def approver(req: ApprovalRequest) -> Decision | None:
            try:
                got = await ctx.elicit(approval_message(req.question, req.answer, req.reasons), ApprovalForm)
            except Exception as exc:  # noqa: BLE001 - no back-channel: the run waits for `runs approve`
                log.info("approval elicitation failed (%r); run %s awaits approval", exc, req.run_id)
                return None
            if isinstance(got, AcceptedElicitation):
                return Decision(approved=got.data.approve, by=_who(ctx), note=got.data.note or None)
            if isinstance(got, DeclinedElicitation):
                return Decision(approved=False, by=_who(ctx), note="declined in the client")
            return None  # cancelled: decide later
        return approver

    def _settle_from_responses(ctx: Context, run_id: str) -> RunResult:
        """The retry of a call whose run awaited approval: settle it with the client's answer to the form."""
        pipeline = _pipeline()
        response = (ctx.input_responses or {}).get(APPROVAL_KEY)
        action = getattr(response, "action", None)
        content = getattr(response, "content", None) or {}
        if action == "accept":
            try:
                form = ApprovalForm.model_validate(content)
            except Exception as exc:  # noqa: BLE001 - a client sent a form that does not match
                raise ToolError(f"invalid_input: the approval form does not match its schema: {exc}") from None
            return pipeline.settle(run_id, approve=form.approve, by=_who(ctx), note=form.note or None)
        if action == "decline":
            return pipeline.settle(run_id, approve=False, by=_who(ctx), note="declined in the client")
        return pipeline.result_of(run_id)  # cancelled or no answer: the run keeps waiting

    @mcp.tool(annotations=RUN, structured_output=True)
    async def ask(
        question: Annotated[str, Field(description="The question, in natural language.", min_length=1,
                                       max_length=10_000)],
        ctx: Context,
        collection: Collection = None,
        use_cache: Annotated[bool, Field(description="Serve a cached answer to a close enough earlier question "
                                                     "(false: always run the pipeline).")] = True,
    ) -> RunResult | InputRequiredResult:
        """Answer a question from the indexed documents, with citations. Runs the guarded pipeline: retrieve ->
        graph -> critique (refine and search again when the passages fall short) -> select -> answer -> guard
        -> judge -> risk review. The result has the answer (or an explicit error object such as
        insufficient_context, blocked_by_guard or awaiting_approval), citations (chunk id, source, character
        span), what the guards did, the judge's scores and the run id. A risky answer (financial, medical or legal
        topic, low faithfulness, a guard block) is held: the client is asked to approve it (elicitation), or it
        waits for `guardrag runs approve|reject`. Slow (seconds): progress is reported per step."""
        if ctx.request_state:
            res = await _checked(_settle_from_responses, ctx, ctx.request_state)
            return tool_result(res, render(res))  # type: ignore[return-value]
        if not question.strip():
            raise ToolError("invalid_input: the question is empty")
        res = await _checked(_pipeline().ask, question, collection=collection, on_step=_progress(ctx),
                             approver=_legacy_approver(ctx), use_cache=use_cache)
        if res.status == "awaiting_approval" and _multi_round(ctx) and _can_elicit(ctx):
            held = (_pipeline().store.get_run(res.run_id).result or {}).get("held_answer") or {}
            form = ElicitRequestFormParams(
                message=approval_message(question, held.get("text"), res.approval.reasons if res.approval else []),
                requested_schema=render_elicitation_schema(ApprovalForm))
            return InputRequiredResult(input_requests={APPROVAL_KEY: ElicitRequest(params=form)},
                                       request_state=res.run_id)
        return tool_result(res, render(res))  # type: ignore[return-value]

    @mcp.tool(annotations=READ_ONLY)
    async def get_run(run_id: RunId) -> RunResult:
        """The stored result of a run (or how far it got, when it did not end)."""
        res = await _checked(_pipeline().result_of, run_id)
        return tool_result(res, render(res))  # type: ignore[return-value]

    @mcp.tool(annotations=RUN)
    async def resume_run(
        run_id: RunId,
        ctx: Context,
        force: Annotated[bool, Field(description="Take over a run another live process holds.")] = False,
    ) -> RunResult:
        """Continue a run that failed (a server crashed, a model timed out) or whose process died, at the step that
        did not finish; finished steps are not redone."""
        res = await _checked(_pipeline().resume, run_id, force=force, on_step=_progress(ctx))
        return tool_result(res, render(res))  # type: ignore[return-value]

    @mcp.tool(annotations=READ_ONLY)
    async def list_runs(
        limit: Annotated[int, Field(description="Most runs to list, newest first.", ge=1, le=200)] = 20,
        status: Annotated[Literal["running", "done", "failed", "tripped"] | None,
                          Field(description="Only runs with this status.")] = None,
    ) -> RunList:
        """The most recent runs, newest first: id, question, status, number of steps."""
        records = _pipeline().store.list_runs(limit=limit + 1, status=status)
        runs = [RunBrief(run_id=r.id, question=r.question, status=r.status, created_at=r.created_at,
                         updated_at=r.updated_at, steps=len(_pipeline().store.steps(r.id))) for r in records[:limit]]
        out = RunList(runs=runs, capped=len(records) > limit)
        text = "\n".join(f"{r.run_id} {r.status:8} {r.steps:2} steps  {r.question[:80]}" for r in runs) or "no runs"
        return tool_result(out, text + ("\n(more runs exist: raise limit)" if out.capped else ""))  # type: ignore[return-value]

    return mcp


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m client.agent_server [--http] [--host H] [--port N]``."""
    serve_main(build_server, prog="guardrag-agent", description=__doc__.splitlines()[0], port=8768, argv=argv)


if __name__ == "__main__":
    main()
