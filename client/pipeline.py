"""The guarded RAG pipeline behind ``guardrag ask``: typed steps over MCP, persisted, resumable, with breakers.

    cache -> retrieve -> graph -> critique -> [refine -> critique]* -> select -> compress -> answer -> guard
    -> judge -> review

``cache`` serves an earlier answer to a close enough question in the same scope (:mod:`client.cache`);
``compress`` keeps the sentences that matter within a token budget (:mod:`client.compress`); ``review`` applies
the risk policy and asks a person (the ``approver``) when it holds the answer. Cost is recorded per step and
model, and every run leaves an append-only audit trail (:mod:`client.state`).

Each step is a function of the previous step's output (pydantic models in and out). The client
talks to the servers only over MCP (:mod:`client.connect`): ``search`` on the retrieval server,
``multihop_search`` on the graph server (personalised PageRank from the question's entities and a second hop
from the entities of the best retrieved passage; when the graph exists, otherwise the step records a skip), ``critique_context`` and ``judge_all`` on the judge server. The answer is
written by the configured model chain (:mod:`core.llm`) or, offline, by the extractive answerer
(:mod:`client.answer`), then guarded by :func:`guards.policy.guard_output` with the question as the
user's own text.

**Guard verdicts are respected.** Blocked hits never enter the context (the server withholds their
text; they are listed). Quarantined text arrives neutralised; the extractive answerer does not
quote past a neutralised instruction, and a model sees the context only as a JSON data document.

**State.** Every step is stored in :class:`client.state.RunStore` (one transaction per
transition). Resuming a run replays its ``done`` steps from their stored outputs and redoes the
step that failed or was in flight; control flow depends only on step outputs, so the replay takes
the same path.

**Circuit breakers** (``Settings.agent``): ``max_steps``, ``max_rounds`` (when
``fail_on_max_rounds``), ``token_budget`` (tokens sent to tools and models, counted with the
embedder's word-piece tokenizer, or ``len(text) // 4`` when the model is not installed), ``deadline``
(wall-clock seconds of one run or resume) and ``repeated_tool_call`` (the same tool with the same
arguments more than ``max_identical_calls`` times in a run). A trip ends the run with status
``tripped``, an error object naming the breaker, an ``budget_exceeded`` answer error, a log line and,
when ``webhook_url`` is set, a JSON POST.

Test hook: with ``GUARDRAG_AGENT_PAUSE_AT=<step name>`` in the environment the orchestrator stops
(sleeps) right after marking that step running, so a test can ``kill -9`` it mid-step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Literal, Self, TypeVar

import anyio
import anyio.to_thread
import httpx
from pydantic import BaseModel, Field

import core  # noqa: F401  (offline switches first)
from client.answer import (
    SYSTEM_PROMPT,
    Answer,
    ChainLink,
    ContextItem,
    extractive_answer,
    model_answer,
)
from client.connect import ServerSpec, ToolCallError, connect, load_servers_file
from client.connect import call as mcp_call
from client.state import AuditPayload, RunRecord, RunStore, Usage, default_db_path
from core import telemetry
from core.errors import Conflict, GuardragError, find_guardrag_error
from core.schemas import ErrorInfo, GuardVerdict
from core.settings import ApprovalSettings, Settings

__all__ = ["BreakerTripped", "Pipeline", "RunResult", "open_store"]

log = logging.getLogger("guardrag.agent")
PIPELINE_VERSION = "1"
PAUSE_ENV = "GUARDRAG_AGENT_PAUSE_AT"
M = TypeVar("M", bound=BaseModel)
OnStep = Callable[[int, str, bool], Awaitable[None]]
"""Called before each step with (seq, name, replayed): progress for a caller such as the agent server."""
Approver = Callable[["ApprovalRequest"], Awaitable["Decision | None"]]
"""Asks a person to approve a held answer; returns their decision, or None when no one could be asked."""


# ============================================================================ step models


class Hit(ContextItem):
    """A retrieved chunk as the pipeline keeps it (text after the server's guard policy): a context item plus
    where it ends, why the guard marked it, and the query that found it."""

    end_char: int | None = None
    guard_categories: list[str] = Field(default_factory=list)
    query: str = ""


class Withheld(BaseModel):
    """A hit the guard policy withheld (no text ever reaches the client)."""

    chunk_id: str
    source: str
    guard: str
    categories: list[str] = Field(default_factory=list)


class Ask(BaseModel):
    """Input of the first step."""

    question: str
    collection: str | None = None
    k: int = 8


class Evidence(BaseModel):
    """What has been found so far: hits (deduplicated by chunk id, in order found), withheld hits, queries run."""

    ask: Ask
    round: int = 0
    searched: list[str] = Field(default_factory=list)
    hits: list[Hit] = Field(default_factory=list)
    withheld: list[Withheld] = Field(default_factory=list)
    graph: dict[str, Any] | None = Field(None, description="The graph step's outcome: skipped/reason/entities.")


class Critique(BaseModel):
    sufficient: bool
    sufficiency: float
    contradictions: int = 0
    grades: dict[str, str] = Field(default_factory=dict, description="chunk_id -> relevant / partly / irrelevant.")
    missing: list[str] = Field(default_factory=list)
    refined_queries: list[str] = Field(default_factory=list)
    reason: str = ""
    rubric: str | None = None


class Critiqued(BaseModel):
    evidence: Evidence
    critique: Critique


class Selected(BaseModel):
    evidence: Evidence
    critique: Critique
    items: list[ContextItem]
    tokens: int
    budget: int
    dropped: list[str] = Field(default_factory=list, description="Chunk ids left out (irrelevant or over budget).")
    compression: dict[str, Any] | None = Field(None, description="What the compress step did: tokens before and "
                                               "after, sentences dropped by reason, compressor version.")


class Cached(BaseModel):
    """Output of the cache step: a hit (the cached result) or a miss, with the scope it was looked up in."""

    ask: Ask
    hit: bool = False
    reason: str = ""
    scope: dict[str, Any] = Field(default_factory=dict)
    from_run: str | None = None
    similarity: float | None = None
    cached_question: str | None = None
    value: dict[str, Any] | None = None


class Answered(BaseModel):
    selected: Selected
    answer: Answer
    answer_info: dict[str, Any] = Field(default_factory=dict)


class Guarded(BaseModel):
    answered: Answered
    answer: Answer
    verdict: GuardVerdict
    allowed: list[str] = Field(default_factory=list)


class JudgeSummary(BaseModel):
    skipped: bool = False
    reason: str | None = None
    passed: bool | None = None
    faithfulness: float | None = None
    faithfulness_verdict: str | None = None
    relevance: float | None = None
    relevance_verdict: str | None = None
    safety: float | None = None
    safe: bool | None = None
    context_sufficiency: float | None = None
    rubrics: list[str] = Field(default_factory=list)


class Judged(BaseModel):
    guarded: Guarded
    judge: JudgeSummary


class Approval(BaseModel):
    """The risk policy's verdict on a run and, once given, a person's decision."""

    required: bool = False
    reasons: list[str] = Field(default_factory=list, description="Why approval is needed (topic, low faithfulness, "
                                                                 "guard block).")
    decision: Literal["approved", "rejected"] | None = None
    by: str | None = None
    at: float | None = None
    note: str | None = None


class Reviewed(BaseModel):
    judged: Judged
    approval: Approval


class ApprovalRequest(BaseModel):
    """What a person is asked to approve."""

    run_id: str
    question: str
    answer: str | None
    reasons: list[str]
    judge: JudgeSummary | None = None


class Decision(BaseModel):
    """A person's decision on a held answer."""

    approved: bool
    by: str = Field(min_length=1, max_length=200)
    note: str | None = Field(None, max_length=2000)


class StepSummary(BaseModel):
    seq: int
    name: str
    status: str
    attempts: int
    duration_ms: float | None = None
    tokens: int = 0


class RunResult(BaseModel):
    """The outcome of ``guardrag ask``: the (guarded) answer, what the guards did, the judge's scores, the run's state."""

    run_id: str
    question: str
    status: Literal["done", "tripped", "failed", "running", "awaiting_approval", "rejected"]
    answer: Answer | None = None
    output_guard: GuardVerdict | None = None
    withheld: list[Withheld] = Field(default_factory=list, description="Hits the guard policy blocked.")
    quarantined: list[str] = Field(default_factory=list, description="Chunk ids returned with instructions neutralised.")
    critique: Critique | None = None
    rounds: int = 0
    judge: JudgeSummary | None = None
    graph: dict[str, Any] | None = None
    tokens: int = 0
    cost: float = Field(0.0, description="What the run's model calls cost (the price table in settings).")
    approval: Approval | None = None
    steps: list[StepSummary] = Field(default_factory=list)
    error: ErrorInfo | None = None


# ============================================================================ breakers


class BreakerTripped(GuardragError):
    """A circuit breaker ended the run."""

    code = "circuit_breaker"

    def __init__(self, breaker: str, message: str, **details: Any) -> None:
        super().__init__(f"circuit breaker '{breaker}' tripped: {message}", details={"breaker": breaker, **details})
        self.breaker = breaker


class _Budget:
    """Per-run counters the breakers read: tokens, cost, tool-call fingerprints, start time."""

    def __init__(self, settings: Settings, counter: Callable[[str], int], store: RunStore | None = None) -> None:
        self.cfg = settings.agent
        self.costs = settings.cost
        self.count = counter
        self.store = store
        self.tokens = 0
        self.cost = 0.0
        self.calls: dict[str, int] = {}
        self.started = time.monotonic()

    def check_cost(self, pending: float = 0.0) -> None:
        """Trip ``cost_budget`` when the run, or all runs today (UTC), spent their budget; ``pending`` is spent but
        not stored yet."""
        c = self.costs
        if c.run_budget is not None and self.cost >= c.run_budget and self.cost > 0:
            raise BreakerTripped("cost_budget", f"the run cost {self.cost:.6f} {c.currency}, its budget is "
                                 f"{c.run_budget:g}", cost=round(self.cost, 6), limit=c.run_budget, scope="run")
        if c.day_budget is not None and self.store is not None:
            spent = self.store.cost_since(_day_start()) + pending
            if spent >= c.day_budget and spent > 0:
                raise BreakerTripped("cost_budget", f"today's runs cost {spent:.6f} {c.currency}, the daily budget "
                                     f"is {c.day_budget:g}", cost=round(spent, 6), limit=c.day_budget, scope="day")

    def add_cost(self, amount: float, pending: float = 0.0) -> None:
        self.cost += amount
        self.check_cost(pending)

    def check_deadline(self) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.cfg.deadline_s:
            raise BreakerTripped("deadline", f"the run took longer than {self.cfg.deadline_s:g} s",
                                 elapsed_s=round(elapsed, 3), limit_s=self.cfg.deadline_s)

    def add_tokens(self, n: int) -> None:
        self.tokens += n
        if self.tokens > self.cfg.max_run_tokens:
            raise BreakerTripped("token_budget", f"the run used {self.tokens} tokens, over its budget of "
                                 f"{self.cfg.max_run_tokens}", tokens=self.tokens, limit=self.cfg.max_run_tokens)

    def add_call(self, fingerprint: str, tool: str) -> None:
        seen = self.calls.get(fingerprint, 0) + 1
        if seen > self.cfg.max_identical_calls:
            raise BreakerTripped("repeated_tool_call", f"{tool} was called {seen} times with the same arguments "
                                 f"(limit {self.cfg.max_identical_calls})", tool=tool, fingerprint=fingerprint)
        self.calls[fingerprint] = seen


def _day_start(now: float | None = None) -> float:
    """Midnight UTC of the current day, in epoch seconds."""
    now = time.time() if now is None else now
    return now - (now % 86400)


def _fingerprint(server: str, tool: str, args: dict[str, Any]) -> str:
    canon = json.dumps([server, tool, args], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _alert(settings: Settings, run_id: str, exc: BreakerTripped) -> None:
    """The alert hook: one log line, plus a JSON POST to ``agent.webhook_url`` when set (best effort)."""
    log.warning("ALERT run=%s breaker=%s: %s", run_id, exc.breaker, exc.message)
    url = settings.agent.webhook_url
    if not url:
        return
    payload = {"event": "circuit_breaker", "run_id": run_id, "breaker": exc.breaker, "message": exc.message,
               "details": exc.details, "at": time.time()}
    try:
        with httpx.Client(timeout=settings.agent.webhook_timeout, trust_env=False) as client:
            client.post(url, json=payload).raise_for_status()
    except httpx.HTTPError as err:
        log.warning("alert webhook %s failed: %s", url, err)


# ============================================================================ the pipeline


def open_store(settings: Settings) -> RunStore:
    """The run store at ``agent.state_db`` (default ``data_dir/runs.sqlite``)."""
    return RunStore(default_db_path(settings.data_dir, settings.agent.state_db), sync=settings.agent.state_sync)


class ServerPool:
    """MCP sessions to the servers, opened on first use and kept until the pool closes.

    ``async with ServerPool(env=...) as pool`` and pass ``pool=`` to :class:`Pipeline` to reuse the server
    subprocesses across runs (tests, the agent server); without one each run opens and closes its own.

    One task owns the sessions (a session must be closed by the task that opened it), so :meth:`get` may be
    called from any task, e.g. concurrent tool calls of the agent server."""

    def __init__(self, *, env: dict[str, str] | None = None, server_env: dict[str, dict[str, str]] | None = None,
                 specs: dict[str, ServerSpec] | None = None, timeout: float = 600) -> None:
        self.env = env
        self.server_env = server_env or {}
        self.specs = specs or {}
        self.timeout = timeout
        self._clients: dict[str, Any] = {}
        self._lock = anyio.Lock()
        self._tg: Any = None
        self._requests: Any = None

    async def __aenter__(self) -> Self:
        self._requests, inbox = anyio.create_memory_object_stream[tuple[str, anyio.Event, list[Any]]](16)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._own, inbox)
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        await self._requests.aclose()
        return await self._tg.__aexit__(*exc)

    async def _own(self, inbox: Any, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with AsyncExitStack() as stack, inbox:
                task_status.started()
                async for server, done, box in inbox:
                    env = dict(self.env or {})
                    env.update(self.server_env.get(server, {}))
                    try:
                        box.append(await stack.enter_async_context(
                            connect(server, env=env or None, spec=self.specs.get(server), timeout=self.timeout)))
                    except Exception as exc:  # noqa: BLE001 - handed to the caller of get()
                        box.append(exc)
                    done.set()
        except Exception as exc:  # noqa: BLE001 - a server that died makes its session's exit raise
            log.debug("closing MCP sessions: %r", exc)

    async def get(self, server: str) -> Any:
        """The session to ``server``, connected on first use."""
        async with self._lock:
            if server not in self._clients:
                done, box = anyio.Event(), []
                await self._requests.send((server, done, box))
                await done.wait()
                if isinstance(box[0], Exception):
                    raise box[0]
                self._clients[server] = box[0]
            return self._clients[server]


class _Ctx:
    """One execution (first run or a resume) of a run."""

    def __init__(self, run: RunRecord, budget: _Budget, stack: AsyncExitStack, on_step: OnStep | None = None) -> None:
        self.run = run
        self.on_step = on_step
        self.budget = budget
        self.stack = stack
        self.seq = 0
        self.step_name = ""
        self.pool: ServerPool | None = None
        self.step_calls: list[str] = []
        self.step_tokens = 0
        self.step_usage: list[Usage] = []
        self.step_tools: list[dict[str, Any]] = []
        self.approver: Approver | None = None
        self.cache_scope: dict[str, Any] | None = None
        self.audit_started = False  # the run's first audit entry is queued or written


class Pipeline:
    """Runs and resumes questions. ``env`` is passed to the server subprocesses (e.g. their data dir);
    ``server_env`` overrides it per server."""

    def __init__(self, settings: Settings, store: RunStore | None = None, *, env: dict[str, str] | None = None,
                 server_env: dict[str, dict[str, str]] | None = None, pool: ServerPool | None = None,
                 approver: Approver | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.approver = approver
        self.store = store or open_store(settings)
        self.env = env
        self.server_env = server_env or {}
        self.specs = load_servers_file(settings.agent.servers_file) if settings.agent.servers_file else {}
        self._embedder: Any = None
        self._embedder_failed = False
        self._memo: Any = None
        self._cache: Any = None
        self._topics: TopicClassifier | None = None
        self._qembedder: Any = None
        self._sembedder: Any = None

    # ------------------------------------------------------------------ public

    async def ask(self, question: str, *, collection: str | None = None, on_step: OnStep | None = None,
                  approver: Approver | None = None, use_cache: bool = True) -> RunResult:
        """Start a run for ``question`` and drive it to its end (done, tripped, failed, or awaiting approval).
        ``approver`` overrides the pipeline's for this run; ``use_cache=False`` bypasses the semantic cache."""
        if not question.strip():
            raise GuardragError("the question is empty", code="invalid_input")
        cfg = self.settings.agent
        run = self.store.create_run(
            question,
            settings={"collection": collection, "agent": cfg.model_dump(mode="json"),
                      "cache": use_cache and self.settings.cache.enabled,
                      "guards": self.settings.guards.model_dump(mode="json"),
                      "llm": [e.label for e in self.settings.llm.chain()]},
            versions=self._versions())
        return await self._execute(run, on_step, approver, fresh=True)

    async def resume(self, run_id: str, *, force: bool = False, on_step: OnStep | None = None,
                     approver: Approver | None = None) -> RunResult:
        """Continue a running (its process died) or failed run at the step that did not finish."""
        run = self.store.claim_run(run_id, force=force)
        return await self._execute(run, on_step, approver)

    def result_of(self, run_id: str) -> RunResult:
        """The stored result of a run, or what is known so far when it did not end."""
        run = self.store.get_run(run_id, steps=True)
        if run.result:
            return RunResult.model_validate(run.result)
        return RunResult(run_id=run.id, question=run.question, status=run.status, steps=_summaries(run),
                         error=ErrorInfo.model_validate(run.error) if run.error else None)

    # ------------------------------------------------------------------ driver

    async def _execute(self, run: RunRecord, on_step: OnStep | None = None,
                       approver: Approver | None = None, *, fresh: bool = False) -> RunResult:
        budget = _Budget(self.settings, self._count, self.store)
        budget.cost = sum(u["cost"] for u in self.store.usage(run.id))  # spent by earlier attempts of this run
        use_cache = bool(run.settings.get("cache"))
        started = not fresh and bool(self.store.audit(run.id))
        ask = Ask(question=run.question, collection=run.settings.get("collection"), k=self.settings.agent.k)
        final: RunResult
        try:
            async with AsyncExitStack() as stack:
                ctx = _Ctx(run, budget, stack, on_step)
                ctx.audit_started = started
                if not use_cache:
                    self._audit_started(ctx)
                ctx.approver = approver or self.approver
                try:
                    outcome = await self._flow(ctx, ask, use_cache=use_cache)
                except BreakerTripped as exc:
                    final = self._finish_tripped(ctx, exc)
                except Exception as exc:  # noqa: BLE001 - recorded; the run stays resumable
                    final = self._finish_failed(ctx, exc)
                else:
                    if isinstance(outcome, Cached):
                        final, entries = await anyio.to_thread.run_sync(self._finish_cached, ctx, outcome)
                        for kind, payload in entries:  # queued last: their building starts with the answer ready
                            self._audit(run.id, kind, payload)
                    else:
                        final = await anyio.to_thread.run_sync(self._finish_reviewed, ctx, outcome)
        except Exception as exc:  # noqa: BLE001 - a server that died makes its client's exit raise; state is recorded
            log.debug("closing the MCP sessions of run %s: %r", run.id, exc)
            stored = self.store.get_run(run.id)
            if stored.status == "running":
                err = _error_info(exc)
                self.store.finish_run(run.id, "failed", error=err)
            final = self.result_of(run.id)
        return final

    async def _flow(self, ctx: _Ctx, ask: Ask, *, use_cache: bool = False) -> Reviewed | Cached:
        """The steps of a run. With the cache, the run's first audit entry is queued after the cache step (which
        writes none), or on a hit once the run is finished: anonymising the question (the audit thread's work) then
        does not compete with serving the cached answer."""
        cfg = self.settings.agent
        if use_cache:
            try:
                cached = await self._step(ctx, "cache", ask, Cached, self._cache_lookup)
            except BaseException:
                self._audit_started(ctx)
                raise
            if cached.hit:
                return cached
            self._audit_started(ctx)
            ctx.cache_scope = cached.scope or None
        ev = await self._step(ctx, "retrieve", ask, Evidence, self._retrieve)
        ev = await self._step(ctx, "graph", ev, Evidence, self._graph)
        cr = await self._step(ctx, "critique", ev, Critiqued, self._critique)
        while not _good(cr.critique):
            if cr.evidence.round >= cfg.max_rounds:
                if cfg.fail_on_max_rounds:
                    raise BreakerTripped("max_rounds", f"the context is still {_why(cr.critique)} after "
                                         f"{cr.evidence.round} refinement round(s)", rounds=cr.evidence.round,
                                         limit=cfg.max_rounds)
                break
            if not _new_queries(cr):
                break
            ev = await self._step(ctx, "refine", cr, Evidence, self._refine)
            if len(ev.hits) == len(cr.evidence.hits):  # the refined queries found nothing new: stop refining
                break
            cr = await self._step(ctx, "critique", ev, Critiqued, self._critique)
        sel = await self._step(ctx, "select", cr, Selected, self._select)
        if cfg.compress:
            sel = await self._step(ctx, "compress", sel, Selected, self._compress)
        ans = await self._step(ctx, "answer", sel, Answered, self._answer)
        grd = await self._step(ctx, "guard", ans, Guarded, self._guard)
        jdg = await self._step(ctx, "judge", grd, Judged, self._judge)
        return await self._step(ctx, "review", jdg, Reviewed, self._review)

    async def _step(self, ctx: _Ctx, name: str, inp: BaseModel, out: type[M],
                    fn: Callable[[_Ctx, Any], Awaitable[M]]) -> M:
        """Replay step ``seq`` when it is done; otherwise check the breakers, run it and record it."""
        ctx.seq += 1
        ctx.step_name = name
        seq, run_id = ctx.seq, ctx.run.id
        stored = self.store.get_step(run_id, seq)
        replay = stored is not None and stored.status == "done"
        if ctx.on_step is not None:
            await ctx.on_step(seq, name, replay)
        if stored is not None and replay:
            if stored.name != name:
                raise GuardragError(f"run {run_id} step {seq} is {stored.name!r}, not {name!r}: the stored history "
                                    "does not match this pipeline", code="conflict")
            ctx.budget.tokens += stored.tokens
            for fp in stored.calls:
                ctx.budget.calls[fp] = ctx.budget.calls.get(fp, 0) + 1
            return out.model_validate(stored.output)
        self.store.begin_step(run_id, seq, name, inp)
        ctx.step_calls, ctx.step_tokens, ctx.step_usage, ctx.step_tools = [], 0, [], []
        started = time.perf_counter()
        try:
            if seq > self.settings.agent.max_steps:
                raise BreakerTripped("max_steps", f"step {seq} ({name}) would exceed the limit of "
                                     f"{self.settings.agent.max_steps} steps", limit=self.settings.agent.max_steps)
            ctx.budget.check_deadline()
            if os.environ.get(PAUSE_ENV) == name:  # test hook: stay here until killed
                log.warning("paused at step %s of run %s (%s is set)", name, run_id, PAUSE_ENV)
                await anyio.sleep(3600)
            with telemetry.tracer("guardrag.client").start_as_current_span(
                    f"step/{name}", attributes={"guardrag.run_id": run_id, "guardrag.step.seq": seq}):
                result = await fn(ctx, inp)
        except BaseException as exc:
            telemetry.observe_step(name, time.perf_counter() - started, ok=False)
            err = _error_info(exc, step=name, seq=seq)
            timings = {"ms": round((time.perf_counter() - started) * 1000, 3), "tools": ctx.step_tools}
            self.store.fail_step(run_id, seq, err, tokens=ctx.step_tokens, calls=ctx.step_calls, timings=timings,
                                 usage=ctx.step_usage)
            raise
        timings = {"ms": round((time.perf_counter() - started) * 1000, 3), "tools": ctx.step_tools}
        telemetry.observe_step(name, time.perf_counter() - started)
        self.store.complete_step(run_id, seq, result, tokens=ctx.step_tokens, calls=ctx.step_calls, timings=timings,
                                 versions=_step_versions(result), usage=ctx.step_usage)
        entry = _audit_entry(name, result)
        if entry is not None:
            self._audit(run_id, *entry)
        return result

    # ------------------------------------------------------------------ MCP

    async def _client(self, ctx: _Ctx, server: str) -> Any:
        if ctx.pool is None:
            ctx.pool = self.pool or await ctx.stack.enter_async_context(
                ServerPool(env=self.env, server_env=self.server_env, specs=self.specs,
                           timeout=self.settings.agent.deadline_s))
        return await ctx.pool.get(server)

    async def _call(self, ctx: _Ctx, server: str, tool: str, args: dict[str, Any], *, text: str = "") -> dict[str, Any]:
        """One tool call under the breakers: deadline, repeated identical call, token budget (``text`` is what the
        call sends that counts as tokens)."""
        ctx.budget.check_deadline()
        fp = _fingerprint(server, tool, args)
        ctx.budget.add_call(fp, tool)
        ctx.step_calls.append(fp)
        if text:
            n = await anyio.to_thread.run_sync(self._count, text)
            ctx.step_tokens += n
            ctx.budget.add_tokens(n)
        client = await self._client(ctx, server)
        started, ok = time.perf_counter(), False
        try:
            with anyio.fail_after(max(0.001, self.settings.agent.deadline_s - (time.monotonic() - ctx.budget.started))):
                res = await mcp_call(client, tool, args)
            ok = True
            return res
        finally:
            ctx.step_tools.append({"server": server, "tool": tool, "ok": ok,
                                   "ms": round((time.perf_counter() - started) * 1000, 3)})

    # ------------------------------------------------------------------ steps

    async def _search(self, ctx: _Ctx, ask: Ask, query: str) -> tuple[list[Hit], list[Withheld]]:
        args: dict[str, Any] = {"query": query, "k": ask.k}
        if ask.collection:
            args["collection"] = ask.collection
        res = await self._call(ctx, "retrieval", "search", args, text=query)
        hits = []
        for h in res.get("hits", []):
            if h.get("text") is None or h.get("guard", {}).get("status") == "blocked":
                continue
            prov = h.get("provenance", {})
            hits.append(Hit(chunk_id=h["chunk_id"], doc_id=prov.get("doc_id"), source=prov.get("source", "?"),
                            title=prov.get("title"), text=h["text"], start_char=prov.get("start_char"),
                            end_char=prov.get("end_char"), score=float(h.get("score", 0.0)),
                            guard=h.get("guard", {}).get("status", "unscanned"),
                            guard_categories=sorted({f["category"] for f in h.get("guard", {}).get("findings", [])}),
                            query=query))
        withheld = [Withheld(chunk_id=b["chunk_id"], source=b.get("provenance", {}).get("source", "?"),
                             guard=b.get("guard", {}).get("status", "blocked"),
                             categories=sorted({f["category"] for f in b.get("guard", {}).get("findings", [])}))
                    for b in res.get("blocked", [])]
        return hits, withheld

    async def _retrieve(self, ctx: _Ctx, ask: Ask) -> Evidence:
        hits, withheld = await self._search(ctx, ask, ask.question)
        return Evidence(ask=ask, round=0, searched=[ask.question], hits=hits, withheld=withheld)

    async def _graph(self, ctx: _Ctx, ev: Evidence) -> Evidence:
        if not self.settings.agent.use_graph:
            return ev.model_copy(update={"graph": {"skipped": True, "reason": "agent.use_graph is off"}})
        coll = {"collection": ev.ask.collection} if ev.ask.collection else {}
        try:
            stats = await self._call(ctx, "graph", "graph_stats", coll)
        except ToolCallError as exc:
            return ev.model_copy(update={"graph": {"skipped": True, "reason": f"no graph: {exc.message}"}})
        except (OSError, GuardragError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            if isinstance(exc, BreakerTripped):
                raise
            # The graph is optional context: a graph server that cannot start does not fail the run.
            return ev.model_copy(update={"graph": {"skipped": True, "reason": f"graph server unavailable: {exc}"}})
        if not stats.get("entities"):
            return ev.model_copy(update={"graph": {"skipped": True, "reason": "the graph is empty"}})
        # Multi-hop search: personalised PageRank from the question's entities plus a second hop from the entities
        # the best retrieved passage names (bench/graph.py: +0.105 recall@5 on HotpotQA over the best single leg).
        args: dict[str, Any] = {"query": ev.ask.question, "k": ev.ask.k, **coll}
        if ev.hits:
            args["hop_chunks"] = {ev.hits[0].chunk_id: 2.0}
        res = await self._call(ctx, "graph", "multihop_search", args, text=ev.ask.question)
        hits, withheld, known = list(ev.hits), list(ev.withheld), {h.chunk_id for h in ev.hits}
        for c in res.get("chunks", []):
            status = c.get("guard", {}).get("status", "unscanned")
            cats = sorted({f["category"] for f in c.get("guard", {}).get("findings", [])})
            if c.get("text") is None or status == "blocked":
                withheld.append(Withheld(chunk_id=c["chunk_id"], source=f"graph:{c.get('doc_id')}", guard=status,
                                         categories=cats))
            elif c["chunk_id"] not in known:
                known.add(c["chunk_id"])
                hits.append(Hit(chunk_id=c["chunk_id"], doc_id=c.get("doc_id"), source=c.get("doc_id") or "graph",
                                title=c.get("title"), text=c["text"], score=float(c.get("score", 0.0)), guard=status,
                                guard_categories=cats, origin="graph", query=ev.ask.question))
        entities = [e.get("name") or e.get("id") for e in res.get("seeds", [])][:20]
        return ev.model_copy(update={"hits": hits, "withheld": withheld,
                                     "graph": {"skipped": False, "mode": "multihop", "entities": entities,
                                               "hop_from": list(args.get("hop_chunks", {})),
                                               "chunks": len(res.get("chunks", []))}})

    async def _critique(self, ctx: _Ctx, ev: Evidence) -> Critiqued:
        hits = ev.hits[:50]
        if not hits:
            crit = Critique(sufficient=False, sufficiency=0.0, reason="nothing was retrieved",
                            refined_queries=[])
            return Critiqued(evidence=ev, critique=crit)
        contexts = [h.text for h in hits]
        res = await self._call(ctx, "judge", "critique_context", {"question": ev.ask.question, "contexts": contexts},
                               text=ev.ask.question + "\n" + "\n".join(contexts))
        grades = {}
        for g in res.get("contexts", []):
            if 0 <= g["index"] < len(hits):
                grades[hits[g["index"]].chunk_id] = g["verdict"]
        self._charge_judge(ctx, [res.get("run") or {}])
        crit = Critique(sufficient=bool(res.get("sufficient")), sufficiency=float(res.get("sufficiency", 0.0)),
                        contradictions=len(res.get("contradictions", [])), grades=grades,
                        missing=list(res.get("missing", [])), refined_queries=list(res.get("refined_queries", [])),
                        reason=res.get("reason", ""), rubric=(res.get("run") or {}).get("rubric"))
        return Critiqued(evidence=ev, critique=crit)

    async def _refine(self, ctx: _Ctx, cr: Critiqued) -> Evidence:
        ev = cr.evidence
        hits, withheld = list(ev.hits), list(ev.withheld)
        known, gone = {h.chunk_id for h in hits}, {w.chunk_id for w in withheld}
        queries = _new_queries(cr)
        for q in queries:
            new_hits, new_withheld = await self._search(ctx, ev.ask, q)
            hits += [h for h in new_hits if h.chunk_id not in known and not known.add(h.chunk_id)]  # type: ignore[func-returns-value]
            withheld += [w for w in new_withheld if w.chunk_id not in gone and not gone.add(w.chunk_id)]  # type: ignore[func-returns-value]
        return Evidence(ask=ev.ask, round=ev.round + 1, searched=ev.searched + queries, hits=hits, withheld=withheld,
                        graph=ev.graph)

    async def _select(self, ctx: _Ctx, cr: Critiqued) -> Selected:
        budget = self.settings.agent.context_tokens
        rank = {"relevant": 0, "partly": 1, None: 1, "irrelevant": 2}
        hits = list(cr.evidence.hits)
        graded = sorted(range(len(hits)), key=lambda i: (rank.get(cr.critique.grades.get(hits[i].chunk_id), 1), i))
        useful = [i for i in graded if cr.critique.grades.get(hits[i].chunk_id) != "irrelevant"] or graded
        items, used, dropped = [], 0, []
        for i in graded:
            h = hits[i]
            if i not in useful:
                dropped.append(h.chunk_id)
                continue
            n = await anyio.to_thread.run_sync(self._count, h.text)
            if used + n > budget:
                dropped.append(h.chunk_id)
                continue
            used += n
            items.append(ContextItem(**{**h.model_dump(include=set(ContextItem.model_fields)), "tokens": n}))
        return Selected(evidence=cr.evidence, critique=cr.critique, items=items, tokens=used, budget=budget,
                        dropped=dropped)

    async def _compress(self, ctx: _Ctx, sel: Selected) -> Selected:
        """Drop duplicate and off-topic sentences within a token budget (:mod:`client.compress`); every kept item
        is an exact substring of its chunk with its start shifted, so citations stay exact."""
        if not sel.items:
            return sel
        from client.compress import compress

        embedder = await anyio.to_thread.run_sync(self._get_memo)
        budget = self.settings.agent.compress_tokens or self.settings.agent.context_tokens
        comp = await anyio.to_thread.run_sync(lambda: compress(sel.evidence.ask.question, sel.items, embedder,
                                                               budget_tokens=budget))
        reasons: dict[str, int] = {}
        for d in comp.dropped:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        return sel.model_copy(update={"items": comp.items, "tokens": comp.tokens_after, "compression": {
            "tokens_before": comp.tokens_before, "tokens_after": comp.tokens_after, "budget": budget,
            "sentences_before": comp.sentences_before, "sentences_after": comp.sentences_after,
            "dropped": reasons, "dropped_items": comp.dropped_items, "version": comp.version}})

    async def _cache_lookup(self, ctx: _Ctx, ask: Ask) -> Cached:
        """Look the question up in the semantic cache, in the scope of this collection's current index version and
        this install's policies (an ingest or delete changes the version: nothing older is served)."""
        name = ask.collection or self.settings.retrieval.collection
        embedder = self._qembedder or await anyio.to_thread.run_sync(self._query_embedder)  # loaded once
        if embedder is None:
            return Cached(ask=ask, reason="no embedding model")
        vec: list[Any] = []

        async def embed() -> None:  # alongside the index-version probe: one waits on the server, the other computes
            vec.append(await anyio.to_thread.run_sync(embedder.embed_one, ask.question))

        await self._client(ctx, "retrieval")  # connect (when needed) outside the task group's cancel scope
        async with anyio.create_task_group() as tg:
            tg.start_soon(embed)
            listed = await self._call(ctx, "retrieval", "list_collections", {"name": name})
        info = next((c for c in listed.get("collections", []) if c.get("name") == name), None)
        if info is None or not info.get("generation"):
            return Cached(ask=ask, reason=f"collection {name!r} has no index version yet")
        scope = self._cache_scope(name, info["generation"], embedder.model_sha256)
        cache = self._get_cache()
        hit = await anyio.to_thread.run_sync(lambda: cache.lookup(vec[0], scope, question=ask.question))
        if hit is None:
            return Cached(ask=ask, scope=scope, reason="no cached question close enough")
        return Cached(ask=ask, hit=True, scope=scope, from_run=hit.run_id, similarity=round(hit.similarity, 4),
                      cached_question=hit.question, value=hit.value)

    def _cache_scope(self, collection: str, generation: str, embedder: str) -> dict[str, Any]:
        a = self.settings.agent
        return {"collection": collection, "generation": generation, "versions": self._versions(),
                "embedder": embedder,  # the vectors of two models are not compared
                "llm": [e.label for e in self.settings.llm.chain()],
                "agent": {"k": a.k, "use_graph": a.use_graph, "max_rounds": a.max_rounds,
                          "context_tokens": a.context_tokens, "compress": a.compress,
                          "compress_tokens": a.compress_tokens, "quantized": a.quantized,
                          "answer_sentences": a.answer_sentences,
                          "min_answer_score": a.min_answer_score},
                "guards": _sha(self.settings.guards.model_dump_json()),
                "approval": _sha(self.settings.approval.model_dump_json())}

    def _cache_put(self, ctx: _Ctx, res: RunResult) -> None:
        """Cache a run's answer: only when it was answered, passed the judge, was not blocked by a guard and needed
        no approval (a risky question goes to a person every time)."""
        scope = ctx.cache_scope
        ok = (scope and res.status == "done" and res.answer is not None and res.answer.error is None
              and res.judge is not None and res.judge.passed is True
              and (res.output_guard is None or res.output_guard.status != "blocked")
              and (res.approval is None or not res.approval.required))  # a risky answer is reviewed every time
        embedder = self._query_embedder() if ok else None
        if embedder is None:
            return
        try:
            self._get_cache().put(embedder.embed_one(res.question), scope, res.question, res.run_id,
                                  res.model_dump(mode="json"), passed=True)
        except Exception as exc:  # noqa: BLE001 - the cache is an optimisation: never fail a run over it
            log.warning("could not cache run %s: %s", res.run_id, exc)

    def _get_cache(self) -> Any:
        if self._cache is None:
            from client.cache import SemanticCache

            c = self.settings.cache
            self._cache = SemanticCache(c.path or self.settings.data_dir / "cache.sqlite", max_entries=c.max_entries,
                                        threshold=c.threshold)
        return self._cache

    def _finish_cached(self, ctx: _Ctx, c: Cached) -> tuple[RunResult, list[tuple[str, AuditPayload]]]:
        """Finish a run served from the cache; returns its result and the audit entries to queue."""
        run = self.store.get_run(ctx.run.id, steps=True)
        res = RunResult.model_validate(c.value)
        answer = res.answer.model_copy(update={"cached": True, "cached_from": c.from_run}) if res.answer else None
        res = res.model_copy(update={"run_id": run.id, "question": run.question, "status": "done", "answer": answer,
                                     "tokens": ctx.budget.tokens, "cost": 0.0, "steps": _summaries(run),
                                     "rounds": 0})
        self.store.finish_run(run.id, "done", result=res)
        entries = []
        if not ctx.audit_started:
            ctx.audit_started = True
            entries.append(self._start_entry(ctx.run))
        # The run that answered first holds the same question and answer anonymised in its audit trail: reuse them
        # (checked by hash) rather than scanning both again. The audit thread builds this entry after writing the
        # entries queued before it, the first run's included.
        prior: dict[str, dict[str, Any]] = {}

        def cache_hit() -> dict[str, Any]:
            prior.update({e.kind: e.payload for e in self.store.audit(c.from_run, wait=False)} if c.from_run else {})
            started = prior.get("run_started", {})
            same = started.get("question_sha256") == _sha(c.cached_question or "") and "question" in started
            return {"from_run": c.from_run, "similarity": c.similarity, "scope": c.scope,
                    "cached_question": started["question"] if same else _anon(c.cached_question or "")}

        def answer_anon(text: str) -> str:
            finished = prior.get("run_finished", {})
            same = finished.get("answer_sha256") == _sha(text) and "answer" in finished
            return finished["answer"] if same else _anon(text)

        return res, [*entries, ("cache_hit", cache_hit), self._finish_entry(res, held=False, anon=answer_anon)]

    async def _answer(self, ctx: _Ctx, sel: Selected) -> Answered:
        """The answer chain: each configured model in order, then the offline extractive answerer, then the static
        response. A link that fails (error, invalid JSON after its repair, an answer citing no passage) hands over
        to the next; the answer says which link answered and why the ones before it did not."""
        cfg = self.settings.agent
        if not sel.items:
            if sel.evidence.withheld and not sel.evidence.hits:
                ans = Answer.failure("blocked_by_guard", "every passage found was withheld by the guard policy",
                                     withheld=[w.chunk_id for w in sel.evidence.withheld])
            else:
                ans = Answer.failure("insufficient_context", "no usable context was found for the question")
            return Answered(selected=sel, answer=ans)
        question = sel.evidence.ask.question
        chain: list[ChainLink] = []
        info: dict[str, Any] = {}
        from core.llm import LLMError, backends_from_settings

        backends = backends_from_settings(self.settings.llm)
        try:
            for backend in backends:
                link = f"{backend.name}:{backend.model}"
                ctx.budget.check_cost(sum(u.cost for u in ctx.step_usage))
                prompt_tokens = sum(i.tokens for i in sel.items)
                ctx.step_tokens += prompt_tokens
                ctx.budget.add_tokens(prompt_tokens)
                began = time.perf_counter()
                try:
                    ans, info = await anyio.to_thread.run_sync(model_answer, question, sel.items, backend)
                    telemetry.observe_generation(link, int(info.get("prompt_tokens") or 0),
                                                 int(info.get("completion_tokens") or 0), time.perf_counter() - began)
                except LLMError as exc:
                    self._charge(ctx, backend.name, backend.model, exc.details or {})
                    chain.append(ChainLink(link=link, outcome="failed", reason=exc.message))
                    continue
                self._charge(ctx, backend.name, backend.model, info)
                extra = max(0, int(info.get("tokens") or 0) - prompt_tokens)
                ctx.step_tokens += extra
                ctx.budget.add_tokens(extra)
                chain.append(ChainLink(link=link, outcome="answered"))
                ans.chain = chain
                return Answered(selected=sel, answer=ans, answer_info=info)
        finally:
            for b in backends:
                b.close()
        if chain:
            info = {"fallback_from": [c.reason for c in chain]}
        embedder = await anyio.to_thread.run_sync(self._get_memo)
        if embedder is not None:
            ans = await anyio.to_thread.run_sync(
                lambda: extractive_answer(question, sel.items, embedder, max_sentences=cfg.answer_sentences,
                                          min_score=cfg.min_answer_score, sufficiency=sel.critique.sufficiency))
            ans.chain = [*chain, ChainLink(link="offline-extractive", outcome="answered")]
            return Answered(selected=sel, answer=ans, answer_info=info)
        chain.append(ChainLink(link="offline-extractive", outcome="failed",
                               reason="the embedding model is not installed (`guardrag models install`)"))
        if cfg.static_response:
            ans = Answer(text=cfg.static_response, confidence=0.0, backend="static-response",
                         chain=[*chain, ChainLink(link="static-response", outcome="answered")])
            return Answered(selected=sel, answer=ans, answer_info=info)
        ans = Answer.failure("failed", "every link of the answer chain failed: "
                             + "; ".join(f"{c.link}: {c.reason}" for c in chain))
        ans.chain = chain
        return Answered(selected=sel, answer=ans, answer_info=info)

    def _charge(self, ctx: _Ctx, backend: str, model: str, info: dict[str, Any]) -> None:
        """Record what a model call spent (tokens in and out, priced) and check the cost budget."""
        tin = int(info.get("prompt_tokens") or 0)
        tout = int(info.get("completion_tokens") or 0)
        if not tin and not tout and info.get("tokens"):
            tin = int(info["tokens"])
        if not tin and not tout:
            return
        usage = _priced(self.settings, backend, model, tin, tout)
        ctx.step_usage.append(usage)
        ctx.budget.add_cost(usage.cost, pending=sum(u.cost for u in ctx.step_usage))

    def _charge_judge(self, ctx: _Ctx, runs: list[dict[str, Any]]) -> None:
        """Record the judge server's model use (its results carry the usage when a model judged)."""
        for run in runs:
            usage = (run or {}).get("usage")
            if usage:
                self._charge(ctx, run.get("backend", "judge"), run.get("model", "?"), usage)

    async def _guard(self, ctx: _Ctx, ans: Answered) -> Guarded:
        if ans.answer.error is not None or not ans.answer.text:
            return Guarded(answered=ans, answer=ans.answer,
                           verdict=GuardVerdict(status="unscanned", details={"reason": "no answer text"}))
        from guards.policy import guard_output

        out = await anyio.to_thread.run_sync(
            lambda: guard_output(ans.answer.text or "", self.settings.guards, user_text=ans.selected.evidence.ask.question))
        if out.text is None:
            answer = Answer.failure("blocked_by_guard", "the answer was withheld by the output guard",
                                    findings=sorted({f.category for f in out.verdict.findings}))
        else:
            answer = ans.answer.model_copy(update={"text": out.text})
        return Guarded(answered=ans, answer=answer, verdict=out.verdict, allowed=out.allowed)

    async def _judge(self, ctx: _Ctx, g: Guarded) -> Judged:
        if g.answer.error is not None or not g.answer.text:
            return Judged(guarded=g, judge=JudgeSummary(skipped=True, reason="there is no answer to judge"))
        if g.answer.backend == "static-response":
            return Judged(guarded=g, judge=JudgeSummary(skipped=True, reason="a static response claims nothing"))
        items = g.answered.selected.items
        question = g.answered.selected.evidence.ask.question
        contexts = [i.text for i in items][:50]
        if g.verdict.status == "redacted":
            # Judge like with like: the contexts get the answer's redaction, so a quoted sentence whose phone
            # number became <PHONE_NUMBER> still matches its source, and no PII goes to the judge.
            from guards.policy import guard_output

            contexts = await anyio.to_thread.run_sync(lambda: [
                guard_output(c, self.settings.guards, user_text=question).text or "" for c in contexts])
        res = await self._call(ctx, "judge", "judge_all",
                               {"question": question, "answer": g.answer.text, "contexts": contexts},
                               text=g.answer.text + "\n" + "\n".join(contexts))
        runs = [res[p]["run"] for p in ("faithfulness", "relevance", "context", "safety")
                if isinstance(res.get(p), dict) and res[p].get("run")]
        self._charge_judge(ctx, runs)
        rubrics = [r["rubric"] for r in runs]
        summary = JudgeSummary(
            passed=res.get("passed"), faithfulness=res["faithfulness"]["score"],
            faithfulness_verdict=res["faithfulness"]["verdict"], relevance=res["relevance"]["score"],
            relevance_verdict=res["relevance"]["verdict"], safety=res["safety"]["score"], safe=res["safety"]["safe"],
            context_sufficiency=res["context"]["sufficiency"], rubrics=rubrics)
        return Judged(guarded=g, judge=summary)

    async def _review(self, ctx: _Ctx, j: Judged) -> Reviewed:
        """The risk policy: a risky topic, low faithfulness or a guard block holds the answer for a person's approval;
        the approver (the CLI's prompt, the agent server's elicitation) is asked when there is one."""
        classifier = await anyio.to_thread.run_sync(self._topic_classifier)
        reasons = await anyio.to_thread.run_sync(risk_reasons, self.settings, j, classifier)
        approval = Approval(required=bool(reasons), reasons=reasons)
        if reasons and ctx.approver is not None:
            req = ApprovalRequest(run_id=ctx.run.id, question=j.guarded.answered.selected.evidence.ask.question,
                                  answer=j.guarded.answer.text, reasons=reasons, judge=j.judge)
            decision = await ctx.approver(req)
            if decision is not None:
                approval.decision = "approved" if decision.approved else "rejected"
                approval.by, approval.at, approval.note = decision.by, time.time(), decision.note
        return Reviewed(judged=j, approval=approval)

    # ------------------------------------------------------------------ endings

    def _base_result(self, ctx: _Ctx, status: str) -> RunResult:
        run = self.store.get_run(ctx.run.id, steps=True)
        return RunResult(run_id=run.id, question=run.question, status=status,  # type: ignore[arg-type]
                         tokens=ctx.budget.tokens, cost=round(ctx.budget.cost, 8), steps=_summaries(run))

    def _finish_reviewed(self, ctx: _Ctx, r: Reviewed) -> RunResult:
        j = r.judged
        ev = j.guarded.answered.selected.evidence
        res = self._base_result(ctx, "done")
        res.answer = j.guarded.answer
        res.output_guard = j.guarded.verdict
        res.withheld = ev.withheld
        res.quarantined = [h.chunk_id for h in ev.hits if h.guard == "quarantined"]
        res.critique = j.guarded.answered.selected.critique
        res.rounds = sum(s.name == "refine" for s in res.steps)
        res.judge = j.judge
        res.graph = ev.graph
        res.approval = r.approval
        stored: dict[str, Any] | RunResult = res
        if r.approval.required and r.approval.decision is None:
            held = res.answer
            res.status = "awaiting_approval"
            res.answer = Answer.failure("awaiting_approval", "the answer is held for a person's approval ("
                                        + "; ".join(r.approval.reasons) + f"): `guardrag runs approve {res.run_id}` "
                                        f"releases it, `guardrag runs reject {res.run_id}` refuses it")
            stored = {**res.model_dump(mode="json"), "held_answer": held.model_dump(mode="json")}
        elif r.approval.decision == "rejected":
            res.status = "rejected"
            res.answer = _rejected(r.approval)
        self.store.finish_run(ctx.run.id, res.status, result=stored)  # type: ignore[arg-type]
        self._audit_finish(res, held=stored is not res)
        self._cache_put(ctx, res)
        return res

    def settle(self, run_id: str, *, approve: bool, by: str, note: str | None = None) -> RunResult:
        """Approve (release the held answer) or reject a run that awaits approval; recorded with who and when."""
        run = self.store.get_run(run_id)
        if run.status != "awaiting_approval" or not run.result:
            raise Conflict(f"run {run_id} is {run.status}, not awaiting approval", details={"status": run.status})
        res = RunResult.model_validate(run.result)
        approval = res.approval or Approval(required=True)
        approval.decision = "approved" if approve else "rejected"
        approval.by, approval.at, approval.note = by, time.time(), note
        res.approval = approval
        if approve:
            res.status, res.answer = "done", Answer.model_validate(run.result["held_answer"])
        else:
            res.status, res.answer = "rejected", _rejected(approval)
        self.store.settle_run(run_id, res.status, result=res)
        self._audit(run_id, "approval", approval.model_dump(mode="json"))
        self._audit_finish(res, held=False)
        return res

    def _finish_tripped(self, ctx: _Ctx, exc: BreakerTripped) -> RunResult:
        err = _error_info(exc, step=ctx.step_name, seq=ctx.seq)
        res = self._base_result(ctx, "tripped")
        res.error = err
        res.answer = Answer.failure("budget_exceeded", exc.message, breaker=exc.breaker)
        self.store.finish_run(ctx.run.id, "tripped", result=res, error=err)
        self._audit(ctx.run.id, "breaker", {"breaker": exc.breaker, "message": exc.message, "details": exc.details,
                                            "step": ctx.step_name, "seq": ctx.seq})
        self._audit_finish(res, held=False)
        _alert(self.settings, ctx.run.id, exc)
        return res

    def _finish_failed(self, ctx: _Ctx, exc: Exception) -> RunResult:
        err = _error_info(exc, step=ctx.step_name, seq=ctx.seq)
        self.store.finish_run(ctx.run.id, "failed", error=err)
        log.warning("run %s failed at step %s: %s (resume with `guardrag runs resume %s`)", ctx.run.id, ctx.seq,
                    err.message, ctx.run.id)
        res = self._base_result(ctx, "failed")
        res.error = err
        return res

    # ------------------------------------------------------------------ helpers

    def _get_embedder(self) -> Any:
        if self._embedder is None and not self._embedder_failed:
            try:
                from core.embedder import get_embedder

                self._embedder = get_embedder(self.settings.model_dir, threads=self.settings.embed_threads)
            except Exception as exc:  # noqa: BLE001 - the model may not be installed: estimate instead
                log.info("embedder unavailable (%s); token counts are estimated", exc)
                self._embedder_failed = True
        return self._embedder

    def _small_embedder(self) -> Any:
        """A session for one short text at a time (``cache.embed_threads``; unset: the pipeline's), float model;
        None without the model."""
        if self._sembedder is None:
            if self.settings.cache.embed_threads is None or self._get_embedder() is None:
                return self._get_embedder()
            from core.embedder import get_embedder

            self._sembedder = get_embedder(self.settings.model_dir, threads=self.settings.cache.embed_threads)
        return self._sembedder

    def _query_embedder(self) -> Any:
        """The session that embeds questions for the cache: the int8 model when ``cache.quantized`` and installed,
        else :meth:`_small_embedder`; None without the model."""
        if self._qembedder is None:
            emb = self._small_embedder()
            if emb is None:
                return None
            if self.settings.cache.quantized:
                emb = self._int8_or(emb, self.settings.cache.embed_threads, "the semantic cache")
            _ = emb.model_sha256  # hashed once here, off the lookup's path (it scopes the entries)
            self._qembedder = emb
        return self._qembedder

    def _get_memo(self) -> Any:
        """A sentence-vector memo shared by compression and the extractive answerer: the int8 model when
        ``agent.quantized`` and installed, else the pipeline's embedder; None without the model."""
        emb = self._get_embedder()
        if emb is not None and self._memo is None:
            from client.compress import MemoEmbedder

            if self.settings.agent.quantized:
                emb = self._int8_or(emb, self.settings.embed_threads, "compression and the offline answerer")
            self._memo = MemoEmbedder(emb)
        return self._memo if emb is not None else None

    def _int8_or(self, fallback: Any, threads: int | None, user: str) -> Any:
        """A session of the int8 model with ``threads``, or ``fallback`` (the float model) when it is not installed,
        with a warning naming its ``user``."""
        from core.embedder import get_embedder

        try:
            return get_embedder(self.settings.model_dir, threads=threads, quantized=True)
        except GuardragError as exc:
            log.warning("%s: the float model instead of the int8 one: %s", user, exc.message)
            return fallback

    def _topic_classifier(self) -> TopicClassifier | None:
        """The risk policy's example-question classifier (None: no example questions, or no embedding model)."""
        if self._topics is None and self.settings.approval.enabled and any(
                t.examples for t in self.settings.approval.topics.values()):
            embedder = self._small_embedder()  # the float model: the topic threshold was tuned on its vectors
            if embedder is not None:
                self._topics = TopicClassifier(embedder, self.settings.approval)
        return self._topics

    def _count(self, text: str) -> int:
        """Tokens of ``text``: the embedder's word pieces, or ``len(text) // 4`` (a documented estimate) without it."""
        emb = self._get_embedder()
        return emb.count_tokens(text) if emb is not None else max(1, len(text) // 4)

    def _audit(self, run_id: str, kind: str, payload: AuditPayload) -> None:
        """Queue an audit entry; a payload given as a function (one that anonymises text) is built by the store's
        audit thread, off the run's path."""
        self.store.append_audit(run_id, kind, payload)

    def _audit_started(self, ctx: _Ctx) -> None:
        """Queue the run's first audit entry unless it is written."""
        if not ctx.audit_started:
            ctx.audit_started = True
            self._audit_start(ctx.run)

    def _audit_start(self, run: RunRecord) -> None:
        self._audit(run.id, *self._start_entry(run))

    def _start_entry(self, run: RunRecord) -> tuple[str, AuditPayload]:
        """The run's first audit entry (the question anonymised when the audit thread builds it)."""
        settings = json.dumps(run.settings, sort_keys=True, default=str)
        fixed = {"question_sha256": _sha(run.question), "collection": run.settings.get("collection"),
                 "settings_sha256": _sha(settings), "versions": run.versions,
                 "answer_prompt_sha256": _sha(SYSTEM_PROMPT)}
        return "run_started", lambda: {"question": _anon(run.question), **fixed}

    def _audit_finish(self, res: RunResult, *, held: bool) -> None:
        self._audit(res.run_id, *self._finish_entry(res, held=held))

    def _finish_entry(self, res: RunResult, *, held: bool,
                      anon: Callable[[str], str] | None = None) -> tuple[str, AuditPayload]:
        """The run's last audit entry. ``anon`` anonymises the answer (default: the PII scanner)."""
        ans = res.answer
        text = ans.text if ans is not None and ans.text else None
        fixed = {"status": res.status, "tokens": res.tokens, "cost": res.cost, "currency": self.settings.cost.currency,
                 "answer_sha256": _sha(text) if text else None,
                 "answer_error": ans.error.code if ans is not None and ans.error else None,
                 "answer_held": held, "error": res.error.model_dump(mode="json") if res.error else None}
        return "run_finished", lambda: {"answer": (anon or _anon)(text) if text else None, **fixed}

    def _versions(self) -> dict[str, Any]:
        from guards import injection, pii
        from guards.policy import POLICY_VERSION

        return {"pipeline": PIPELINE_VERSION, "guard_policy": POLICY_VERSION,
                "injection_scanner": injection.SCANNER_VERSION, "pii_scanner": pii.SCANNER_VERSION,
                "embedder_dir": str(self.settings.model_dir)}


# ============================================================================ small functions


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _anon(text: str) -> str:
    """``text`` with every PII entity the scanner knows replaced by its type (``<PERSON>``, ``<EMAIL_ADDRESS>``):
    how the audit trail stores what people wrote and read."""
    from guards.pii import anonymize, scan_pii

    return anonymize(text, scan_pii(text).findings, "replace")


def _priced(settings: Settings, backend: str, model: str, tokens_in: int, tokens_out: int) -> Usage:
    """Tokens and their cost from the price table (offline backends are free; a model with no price is unpriced)."""
    label = f"{backend}:{model}"
    if backend.startswith("offline"):
        return Usage(model=label, tokens_in=tokens_in, tokens_out=tokens_out, cost=0.0)
    price = settings.cost.prices.get(model) or settings.cost.prices.get(label)
    if price is None:
        return Usage(model=label, tokens_in=tokens_in, tokens_out=tokens_out, cost=0.0, priced=False)
    cost = tokens_in / 1e6 * price.input + tokens_out / 1e6 * price.output
    return Usage(model=label, tokens_in=tokens_in, tokens_out=tokens_out, cost=round(cost, 10))


class TopicClassifier:
    """The risk policy's nearest-example classifier: a question's best cosine similarity to each topic's example
    questions, on the local embedding model (the examples are embedded once; the last question is remembered)."""

    def __init__(self, embedder: Any, policy: ApprovalSettings) -> None:
        self.embedder = embedder
        self._examples = {name: list(t.examples) for name, t in policy.topics.items() if t.examples}
        self._vecs = {name: embedder.embed(ex) for name, ex in self._examples.items()}
        self._last: tuple[str, Any] | None = None

    def nearest(self, topic: str, question: str) -> tuple[float, str]:
        """(similarity, example) of the topic's example closest to ``question``; (0.0, "") without examples."""
        if topic not in self._vecs:
            return 0.0, ""
        last = self._last  # one read: runs in other threads may replace it meanwhile
        if last is None or last[0] != question:
            last = self._last = (question, self.embedder.embed_one(question))
        sims = self._vecs[topic] @ last[1]
        i = int(sims.argmax())
        return float(sims[i]), self._examples[topic][i]


def topic_reasons(policy: ApprovalSettings, question: str, answer: str,
                  classifier: TopicClassifier | None) -> list[str]:
    """The risky topics of a run: a topic keyword in the question or the answer, or (with ``classifier``) a question
    close enough to one of the topic's example questions."""
    text = f"{question}\n{answer}".lower()
    reasons = []
    for topic, rule in policy.topics.items():
        hits = [k for k in rule.keywords if re.search(r"(?<![\w])" + re.escape(k.lower()), text)]
        if hits:
            reasons.append(f"{topic} topic ({', '.join(hits[:3])})")
            continue
        if classifier is not None and rule.examples:
            sim, example = classifier.nearest(topic, question)
            if sim >= rule.similarity:
                reasons.append(f"{topic} topic (close to {example!r}: similarity {sim:.2f})")
    return reasons


def risk_reasons(settings: Settings, j: Judged, classifier: TopicClassifier | None = None) -> list[str]:
    """Why a run's answer needs a person's approval (empty: it does not): a risky topic (keywords in the question
    or the answer; with ``classifier``, a question like the topic's examples), low faithfulness, or a guard
    block."""
    policy = settings.approval
    if not policy.enabled:
        return []
    question = j.guarded.answered.selected.evidence.ask.question
    reasons = topic_reasons(policy, question, j.guarded.answer.text or "", classifier)
    faith, floor = j.judge.faithfulness, policy.min_faithfulness
    if not j.judge.skipped and faith is not None:
        if floor is not None and faith < floor:
            reasons.append(f"low faithfulness ({faith:.2f} < {floor:g})")
        elif floor is None and j.judge.faithfulness_verdict == "unfaithful":
            reasons.append(f"low faithfulness ({faith:.2f}: the judge finds the answer unfaithful)")
    ev = j.guarded.answered.selected.evidence
    if policy.on_guard_block and (ev.withheld or j.guarded.verdict.status == "blocked"):
        what = "the answer" if j.guarded.verdict.status == "blocked" else f"{len(ev.withheld)} passage(s)"
        reasons.append(f"guard blocked {what}")
    return reasons


def _rejected(a: Approval) -> Answer:
    return Answer.failure("rejected", f"a reviewer ({a.by}) rejected the answer" + (f": {a.note}" if a.note else ""),
                          by=a.by, at=a.at)


def _audit_entry(step: str, out: BaseModel) -> tuple[str, dict[str, Any]] | None:
    """The audit record of a finished step (None: the step leaves nothing to explain)."""
    if isinstance(out, Selected):
        return "compression" if out.compression else "sources", {
            "used": [{"chunk_id": i.chunk_id, "source": i.source, "doc_id": i.doc_id, "sha256": _sha(i.text),
                      "guard": i.guard, "origin": i.origin, "tokens": i.tokens} for i in out.items],
            "withheld": [w.model_dump(mode="json") for w in out.evidence.withheld],
            "dropped": out.dropped, "queries": len(out.evidence.searched), "compression": out.compression}
    if isinstance(out, Answered):
        a = out.answer
        return "answer", {"backend": a.backend, "chain": [c.model_dump(mode="json") for c in a.chain],
                          "citations": [c.model_dump(mode="json") for c in a.citations], "confidence": a.confidence,
                          "error": a.error.code if a.error else None, "prompt_sha256": _sha(SYSTEM_PROMPT),
                          "model": out.answer_info.get("model"), "text_sha256": _sha(a.text) if a.text else None}
    if isinstance(out, Guarded):
        return "output_guard", {"status": out.verdict.status, "policy": out.verdict.policy,
                                "categories": sorted({f.category for f in out.verdict.findings}),
                                "allowed": out.allowed, "details": out.verdict.details}
    if isinstance(out, Judged):
        return "judge", out.judge.model_dump(mode="json")
    if isinstance(out, Reviewed):
        return "risk_review", out.approval.model_dump(mode="json")
    return None


def _good(c: Critique) -> bool:
    return c.sufficient and c.contradictions == 0


def _why(c: Critique) -> str:
    return "contradictory" if c.contradictions else "insufficient"


def _new_queries(cr: Critiqued) -> list[str]:
    seen = {" ".join(q.split()).lower() for q in cr.evidence.searched}
    out = []
    for q in cr.critique.refined_queries:
        key = " ".join(q.split()).lower()
        if key and key not in seen:
            seen.add(key)
            out.append(q)
    return out


def _error_info(exc: BaseException, **where: Any) -> ErrorInfo:
    found = find_guardrag_error(exc)
    if found is not None:
        return ErrorInfo(code=found.code, message=found.message, details={**found.details, **where})
    if isinstance(exc, TimeoutError):
        return ErrorInfo(code="timeout", message="a tool call did not answer before the run's deadline", details=where)
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return ErrorInfo(code="cancelled", message="the run was cancelled", details=where)
    return ErrorInfo(code="step_failed", message=f"{type(exc).__name__}: {exc}"[:2000], details=where)




def _step_versions(result: BaseModel) -> dict[str, Any]:
    if isinstance(result, Critiqued) and result.critique.rubric:
        return {"rubric": result.critique.rubric}
    if isinstance(result, Answered):
        return {"answer_backend": result.answer.backend}
    if isinstance(result, Guarded):
        return {"policy": result.verdict.policy, **{k: v for k, v in result.verdict.details.items() if "scanner" in k}}
    if isinstance(result, Judged):
        return {"rubrics": result.judge.rubrics}
    return {}


def _summaries(run: RunRecord) -> list[StepSummary]:
    return [StepSummary(seq=s.seq, name=s.name, status=s.status, attempts=s.attempts, duration_ms=s.duration_ms,
                        tokens=s.tokens) for s in run.steps]
