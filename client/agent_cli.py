"""``guardrag ask`` and ``guardrag runs list|show|resume``: the orchestrator's command line.

Mounted on the main CLI by :func:`register`; also runnable alone: ``python -m client.agent_cli ask "..."``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
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

runs_app = typer.Typer(help="Stored runs of `guardrag ask`: list, show, resume.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()


def _setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("presidio-analyzer", "presidio_analyzer", "chromadb", "httpx", "mcp"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _fail(exc: BaseException, code: int = 1) -> None:
    console.print(f"[bold red]error[/]: {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code)




def _pipeline() -> Any:
    from client.pipeline import Pipeline

    return Pipeline(get_settings())


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
        out.print(Panel(escape(ans.text), title=f"answer (confidence {ans.confidence:.2f}, {escape(ans.backend)})",
                        border_style="green"))
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
    steps = ", ".join(f"{s.name}" + (f"x{s.attempts}" if s.attempts > 1 else "") for s in res.steps)
    console.print(f"[dim]run {res.run_id} {res.status}; {res.tokens} tokens; steps: {steps}[/]")


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
) -> None:
    """Answer a question from the indexed documents: retrieve, critique, refine, answer, guard, judge.

    Every step is stored; a run that fails or is killed can be continued with `guardrag runs resume RUN_ID`."""
    _setup_logging()
    pipeline = _pipeline()
    _report(_drive(lambda: pipeline.ask(question, collection=collection)), as_json)


@runs_app.command("list")
def runs_list(
    limit: Annotated[int, typer.Option(help="How many of the latest runs.")] = 20,
    status: Annotated[str | None, typer.Option(help="Only runs in this status (running, failed, tripped, done).")] = None,
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


def register(app: typer.Typer) -> None:
    """Mount ``ask`` and ``runs`` on the main ``guardrag`` app."""
    app.command("ask")(ask)
    app.add_typer(runs_app, name="runs")


app = typer.Typer(help="guardrag's orchestrator: ask and runs.", no_args_is_help=True, pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":
    app()
