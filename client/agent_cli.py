"""``guardrag ask`` and ``guardrag runs list|show|resume``: the orchestrator's command line.

Mounted on the main CLI by :func:`register`; also runnable alone: ``python -m client.agent_cli ask "..."``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

import core  # noqa: F401  (offline switches)
from core.errors import GuardragError, find_guardrag_error
from core.settings import get_settings

runs_app = typer.Typer(help="Stored runs of `guardrag ask`: list, show, resume, approve, reject.",
                       no_args_is_help=True)
console = Console(stderr=True)
out = Console()


def _setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("presidio-analyzer", "presidio_analyzer", "chromadb", "httpx", "mcp"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _fail(exc: BaseException, code: int = 1) -> None:
    console.print(f"[bold red]error[/]: {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code)




def _pipeline(*, interactive: bool = False) -> Any:
    from client.pipeline import Pipeline
    from core import telemetry

    telemetry.configure_tracing("guardrag-client")  # spans only when an exporter is configured (OTEL_*)

    return Pipeline(get_settings(), approver=_ask_person if interactive else None)


async def _ask_person(req: Any) -> Any:
    """The CLI's approver: show the held answer and ask at the terminal (who = the logged-in user)."""
    import getpass

    from client.pipeline import Decision

    console.print(Panel(escape(req.answer or "(no answer text)"), title=f"approval needed for run {req.run_id}",
                        subtitle=escape("; ".join(req.reasons)), border_style="magenta"))
    approve = await anyio.to_thread.run_sync(lambda: typer.confirm("Release this answer?", default=False,
                                                                   err=True))
    note = await anyio.to_thread.run_sync(lambda: typer.prompt("Note (optional)", default="", show_default=False,
                                                               err=True))
    return Decision(approved=approve, by=getpass.getuser(), note=note or None)


def _drive(fn: Any, *args: Any) -> Any:
    try:
        return anyio.run(fn, *args)
    except BaseException as exc:
        found = find_guardrag_error(exc)
        if found is None:
            raise
        _fail(found)


def show_result(res: Any) -> None:
    """The rich rendering of a :class:`client.pipeline.RunResult`."""
    ans = res.answer
    if ans is not None and ans.error is None and ans.text:
        origin = f", cached from run {ans.cached_from}" if ans.cached else ""
        out.print(Panel(escape(ans.text), title=f"answer (confidence {ans.confidence:.2f}, {escape(ans.backend)}"
                                                f"{escape(origin)})", border_style="green"))
    elif ans is not None and ans.error is not None:
        out.print(Panel(f"[bold]{ans.error.code}[/]: {escape(ans.error.message)}", title="no answer",
                        border_style="yellow"))
    if ans is not None and ans.citations:
        table = Table(title="citations", expand=True)
        for col in ("#", "source", "chunk", "span"):
            table.add_column(col)
        for c in ans.citations:
            table.add_row(str(c.n), escape(c.source), escape(c.chunk_id), f"{c.span[0]}-{c.span[1]}" if c.span else "-")
        out.print(table)
    guard = Table(title="guards", expand=True, show_header=False)
    guard.add_column("what", width=22)
    guard.add_column("detail", ratio=1)
    if res.output_guard is not None:
        cats = sorted({f.category for f in res.output_guard.findings})
        guard.add_row("answer", f"{res.output_guard.status}" + (f": {', '.join(cats)}" if cats else ""))
    guard.add_row("quarantined chunks", escape(", ".join(res.quarantined)) or "none")
    guard.add_row("withheld chunks", escape(", ".join(f"{w.chunk_id} ({w.source})" for w in res.withheld)) or "none")
    out.print(guard)
    if res.judge is not None and not res.judge.skipped:
        j = res.judge
        table = Table(title=f"judge: {'PASS' if j.passed else 'FAIL'}", expand=True)
        for col in ("faithfulness", "relevance", "safety", "context sufficiency"):
            table.add_column(col)
        table.add_row(f"{j.faithfulness:.2f} {j.faithfulness_verdict}", f"{j.relevance:.2f} {j.relevance_verdict}",
                      f"{j.safety:.2f} {'safe' if j.safe else 'UNSAFE'}", f"{j.context_sufficiency:.2f}")
        out.print(table)
    if res.error is not None:
        console.print(f"[bold red]{res.status}[/]: {escape(res.error.code)}: {escape(res.error.message)}")
    appr = res.approval
    if appr is not None and appr.required:
        who = f"{appr.decision} by {appr.by}" if appr.decision else "awaiting a decision"
        console.print(f"[magenta]approval[/]: {escape('; '.join(appr.reasons))} - {escape(who)}")
    if ans is not None and len(ans.chain) > 1:
        console.print("[dim]answer chain: " + escape(" > ".join(f"{c.link} ({c.outcome})" for c in ans.chain)) + "[/]")
    steps = ", ".join(f"{s.name}" + (f"x{s.attempts}" if s.attempts > 1 else "") for s in res.steps)
    cost = f"; cost {res.cost:.6f}" if res.cost else ""
    console.print(f"[dim]run {res.run_id} {res.status}; {res.tokens} tokens{cost}; steps: {steps}[/]")


def _report(res: Any, as_json: bool) -> None:
    """Print a run's result (JSON or rich) and exit with its status."""
    if as_json:
        out.print_json(res.model_dump_json())
    else:
        show_result(res)
    _exit_for(res)


def _exit_for(res: Any) -> None:
    if res.status != "done":
        raise typer.Exit(1)


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Annotated[str | None, typer.Option(help="Collection to search (retrieval and graph).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the structured result.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not serve the answer from the semantic cache.")] = False,
    ask_approval: Annotated[bool | None, typer.Option(
        "--ask-approval/--no-input", help="Ask at the terminal when a run needs approval (default: when stdin is a "
        "terminal); --no-input ends such a run awaiting `guardrag runs approve|reject`.")] = None,
) -> None:
    """Answer a question from the indexed documents: retrieve, critique, refine, answer, guard, judge.

    Every step is stored; a run that fails or is killed can be continued with `guardrag runs resume RUN_ID`.
    A risky run (see `[approval]` settings) asks for approval at the terminal, or waits for
    `guardrag runs approve|reject RUN_ID` when there is no terminal."""
    _setup_logging()
    interactive = ask_approval if ask_approval is not None else (sys.stdin.isatty() and not as_json)
    pipeline = _pipeline(interactive=interactive)
    _report(_drive(lambda: pipeline.ask(question, collection=collection, use_cache=not no_cache)), as_json)


@runs_app.command("list")
def runs_list(
    limit: Annotated[int, typer.Option(help="How many of the latest runs.")] = 20,
    status: Annotated[str | None, typer.Option(help="Only runs in this status (running, failed, tripped, done, "
                                                    "awaiting_approval, rejected).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The latest runs, newest first."""
    from client.pipeline import open_store

    with open_store(get_settings()) as store:
        runs = store.list_runs(limit=limit, status=status)
    if as_json:
        out.print_json(json.dumps([r.model_dump(mode="json", exclude={"steps"}) for r in runs]))
        return
    table = Table(title=f"runs ({len(runs)})", expand=True)
    for col in ("run", "status", "created", "question", "error"):
        table.add_column(col)
    for r in runs:
        err = (r.error or {}).get("code", "")
        table.add_row(r.id, r.status, datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S"),
                      escape(r.question[:80]), escape(err))
    out.print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run with its steps as JSON.")] = False,
) -> None:
    """A run: its steps (status, attempts, duration, tokens) and its result or error."""
    from client.pipeline import open_store

    with open_store(get_settings()) as store:
        try:
            run = store.get_run(run_id, steps=True)
        except GuardragError as exc:
            _fail(exc)
    if as_json:
        out.print_json(run.model_dump_json())
        return
    table = Table(title=f"run {run.id}: {run.status} - {escape(run.question)}", expand=True)
    for col in ("seq", "step", "status", "attempts", "ms", "tokens", "error"):
        table.add_column(col)
    for s in run.steps:
        table.add_row(str(s.seq), s.name, s.status, str(s.attempts),
                      f"{s.duration_ms:.0f}" if s.duration_ms is not None else "-", str(s.tokens),
                      escape(((s.error or {}).get("message") or "")[:100]))
    out.print(table)
    if run.result:
        from client.pipeline import RunResult

        show_result(RunResult.model_validate(run.result))
    elif run.error:
        console.print(f"[bold red]{run.status}[/]: {escape(str(run.error.get('code')))}: "
                      f"{escape(str(run.error.get('message')))}")


@runs_app.command("resume")
def runs_resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue (running after a crash, or failed).")],
    force: Annotated[bool, typer.Option(help="Take over a run whose process still seems alive.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the structured result.")] = False,
) -> None:
    """Continue a run at the step that did not finish; completed steps are replayed from the store, not redone."""
    _setup_logging()
    pipeline = _pipeline()
    _report(_drive(lambda: pipeline.resume(run_id, force=force)), as_json)


def _settle(run_id: str, approve: bool, by: str | None, note: str | None, as_json: bool) -> None:
    import getpass

    pipeline = _pipeline()
    try:
        res = pipeline.settle(run_id, approve=approve, by=by or getpass.getuser(), note=note)
    except GuardragError as exc:
        _fail(exc)
    if as_json:
        out.print_json(res.model_dump_json())
    else:
        show_result(res)


By = Annotated[str | None, typer.Option("--by", help="Who decides (default: the logged-in user).")]
Note = Annotated[str | None, typer.Option("--note", help="Why (kept in the audit trail).")]


@runs_app.command("approve")
def runs_approve(
    run_id: Annotated[str, typer.Argument(help="A run awaiting approval.")],
    by: By = None,
    note: Note = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the structured result.")] = False,
) -> None:
    """Release the held answer of a run awaiting approval (recorded with who and when)."""
    _settle(run_id, True, by, note, as_json)


@runs_app.command("reject")
def runs_reject(
    run_id: Annotated[str, typer.Argument(help="A run awaiting approval.")],
    by: By = None,
    note: Note = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the structured result.")] = False,
) -> None:
    """Refuse the held answer of a run awaiting approval (recorded with who and when)."""
    _settle(run_id, False, by, note, as_json)


audit_app = typer.Typer(help="The audit trail of runs: what was decided, from what, by whom.", no_args_is_help=True)


@audit_app.command("show")
def audit_show(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Export the trail as JSON.")] = False,
) -> None:
    """A run's audit trail: sources (ids and content hashes), guard verdicts, judge scores, model, prompt and rubric
    versions, breakers, approvals. Personal data is stored anonymised."""
    from client.pipeline import open_store

    with open_store(get_settings()) as store:
        try:
            run = store.get_run(run_id)
        except GuardragError as exc:
            _fail(exc)
        entries = store.audit(run_id)
        usage = store.usage(run_id)
    if as_json:
        out.print_json(json.dumps({"run_id": run.id, "status": run.status, "usage": usage,
                                   "entries": [e.model_dump(mode="json") for e in entries]}))
        return
    table = Table(title=f"audit trail of run {run.id} ({run.status})", expand=True, show_lines=True)
    table.add_column("#", width=4)
    table.add_column("when", width=19)
    table.add_column("what", width=14)
    table.add_column("detail", ratio=1)
    for e in entries:
        table.add_row(str(e.id), datetime.fromtimestamp(e.at).strftime("%Y-%m-%d %H:%M:%S"), e.kind,
                      escape(json.dumps(e.payload, ensure_ascii=False)[:1500]))
    out.print(table)
    if usage:
        spent = sum(u["cost"] for u in usage)
        console.print(f"[dim]{len(usage)} model call(s), {sum(u['tokens_in'] for u in usage)} tokens in, "
                      f"{sum(u['tokens_out'] for u in usage)} out, cost {spent:.6f}[/]")


def stats(
    hours: Annotated[float | None, typer.Option(help="Only runs of the last N hours (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Operational metrics from the run store: latency p50/p95/p99 per step and per tool, error rates, tokens per
    second, cost per model and per day, cache hit rate, approvals."""
    import time as _time

    from client.pipeline import open_store
    from client.stats import compute_stats

    with open_store(get_settings()) as store:
        st = compute_stats(store, since=_time.time() - hours * 3600 if hours else None)
    if as_json:
        out.print_json(st.model_dump_json())
        return

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for title, rows in (("steps", st.steps), ("tool calls", st.tools), ("runs end to end", {"run": st.runs_e2e})):
        table = Table(title=title, expand=True)
        for col in ("name", "count", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms"):
            table.add_column(col, justify="left" if col == "name" else "right")
        for name, lat in rows.items():
            table.add_row(escape(name), str(lat.count), str(lat.errors), f"{lat.error_rate:.2%}", ms(lat.p50_ms),
                          ms(lat.p95_ms), ms(lat.p99_ms))
        out.print(table)
    currency = get_settings().cost.currency
    out.print(f"runs: {st.runs} ({', '.join(f'{k} {v}' for k, v in sorted(st.statuses.items())) or 'none'}); "
              f"tokens {st.tokens}" + (f" ({st.tokens_per_s}/s of step time)" if st.tokens_per_s else ""))
    out.print(f"cost: {st.cost:.6f} {currency}" + (f"; by model: {json.dumps(st.cost_by_model)}" if st.cost_by_model
                                                   else "") + (f"; {st.unpriced_calls} unpriced call(s)"
                                                               if st.unpriced_calls else ""))
    if st.cost_by_day:
        out.print("cost by day (UTC): " + ", ".join(f"{d} {c:.6f}" for d, c in st.cost_by_day.items()))
    rate = "-" if st.cache_hit_rate is None else f"{st.cache_hit_rate:.1%}"
    out.print(f"cache: {st.cache_hits} hit(s) of {st.cache_lookups} lookup(s) ({rate}); approvals: "
              + (", ".join(f"{k} {v}" for k, v in st.approvals.items()) or "none"))


def eval_command(
    file: Annotated[Path, typer.Argument(help="JSONL questions: question, optional collection, expected_sources, id.")],
    thresholds: Annotated[Path | None, typer.Option(help="TOML with [min] and [max] tables of metric limits; "
                                                         "exit 1 when one is violated.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.", dir_okay=False)] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an HTML report with plots.",
                                                  dir_okay=False)] = None,
) -> None:
    """Run the pipeline over a question set, judge every answer, report score distributions, per-step latency and
    cost, and exit non-zero when a metric falls below its threshold (a CI gate)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from client.cli import _load_for_eval, _write_outputs
    from client.eval_runs import (
        check,
        load_questions,
        load_thresholds,
        render_html,
        run_eval,
    )
    from client.pipeline import ServerPool

    _setup_logging()
    questions = _load_for_eval(file, load_questions, {"--json": json_out, "--html": html_out})
    limits = _load_for_eval(thresholds, load_thresholds, {}) if thresholds else None
    pipeline = _pipeline()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"eval {file.name}", total=len(questions))

        async def go() -> Any:
            async with ServerPool(specs=pipeline.specs, timeout=pipeline.settings.agent.deadline_s) as pool:
                pipeline.pool = pool
                return await run_eval(questions, pipeline, file=str(file),
                                      progress=lambda done, total: bar.update(task, completed=done))

        report = _drive(go)
    if limits is not None:
        try:
            report = check(report, limits)
        except GuardragError as exc:
            _fail(exc, code=2)
    table = Table(title=f"evaluation of {file} ({report.n} questions)", expand=True)
    for col in ("metric", "value", "threshold", "verdict"):
        table.add_column(col)
    verdicts = {v.metric: v for v in report.verdicts}
    for k, v in report.metrics.items():
        lim = verdicts.get(k)
        table.add_row(k, "-" if v is None else f"{v:.4g}", f"{lim.bound} {lim.threshold:g}" if lim else "",
                      ("[green]ok[/]" if lim.ok else "[bold red]FAIL[/]") if lim else "")
    out.print(table)
    _write_outputs({"--json": (json_out, lambda: report.model_dump_json(indent=2) + "\n"),
                    "--html": (html_out, lambda: render_html(report))})
    if not report.passed:
        console.print("[bold red]evaluation failed[/]: " + ", ".join(
            f"{v.metric} {v.value} (needs {'>=' if v.bound == 'min' else '<='} {v.threshold:g})"
            for v in report.verdicts if not v.ok))
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount ``ask``, ``runs`` and ``audit`` on the main ``guardrag`` app."""
    app.command("ask")(ask)
    app.add_typer(runs_app, name="runs")
    app.add_typer(audit_app, name="audit")
    app.command("stats")(stats)
    app.command("eval")(eval_command)


app = typer.Typer(help="guardrag's orchestrator: ask and runs.", no_args_is_help=True, pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":
    app()
