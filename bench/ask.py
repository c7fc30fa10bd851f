#!/usr/bin/env python3
"""`guardrag ask` benchmark on BEIR SciFact (dev split): latency per step and end to end, and answer quality.

    .venv/bin/python bench/ask.py [--workdir DIR] [--questions 40]

The corpus is ingested once (in process, reused from ``--workdir``); then the orchestrator answers the
questions through real retrieval, graph and judge servers over stdio (one set of server subprocesses,
kept for the whole run, as a long-lived agent keeps them), offline backends only. Two configurations run
in the same process, question by question alternating, so a busy machine slows both alike:

* ``full``: retrieve -> graph -> critique -> up to 2 refinement rounds -> select -> answer -> guard -> judge;
* ``single-pass`` (the baseline): no graph, no refinement (``max_rounds = 0``).

Per step and end to end: p50/p95 latency (ms). Quality: the share of questions whose answer cites a
relevant abstract, the judge's pass rate and mean faithfulness. The graph step finds no graph for the
collection (none is built here), so it records a skip: its cost is one ``graph_stats`` call.
Prints a table and writes ``bench/results/ask.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from retrieval import COLLECTION, DEFAULT_DATA, _items, load_scifact, pct  # noqa: E402

import core  # noqa: E402,F401
from client.pipeline import Pipeline, ServerPool  # noqa: E402
from client.state import RunStore  # noqa: E402
from core.settings import AgentSettings, ApprovalSettings, CacheSettings, RetrievalSettings, Settings  # noqa: E402

STEPS = ("retrieve", "graph", "critique", "refine", "select", "compress", "answer", "guard", "judge", "review")


def ensure_index(settings: Settings, console: Console) -> float | None:
    from servers.retrieval.engine import RetrievalEngine

    engine = RetrievalEngine(settings)
    if COLLECTION in {c.name for c in engine.list_collections()}:
        return None
    corpus, _, _ = load_scifact(DEFAULT_DATA)
    console.print(f"ingesting all {len(corpus)} SciFact documents (once; reused from the workdir) ...")
    t = time.perf_counter()
    engine.ingest_texts(COLLECTION, _items(corpus))
    return round(time.perf_counter() - t, 1)


def server_env(settings: Settings) -> dict[str, str]:
    return {"GUARDRAG_DATA_DIR": str(settings.data_dir), "GUARDRAG_MODEL_DIR": str(settings.model_dir)}


async def run(settings: Settings, configs: dict[str, Settings], questions: list[tuple[str, set[str]]],
              warmup: int) -> dict:
    env = server_env(settings)
    per: dict[str, dict] = {name: {"e2e": [], "steps": {s: [] for s in STEPS}, "cited_relevant": 0, "answered": 0,
                                   "passed": 0, "faithfulness": [], "statuses": {}, "rounds": []}
                            for name in configs}
    async with ServerPool(env=env) as pool:
        stores = {name: RunStore(Path(s.agent.state_db)) for name, s in configs.items()}
        pipes = {name: Pipeline(s, stores[name], env=env, pool=pool) for name, s in configs.items()}
        for q, _ in questions[:warmup]:  # start the servers and let them finish loading
            for p in pipes.values():
                await p.ask(q, collection=COLLECTION)
        for n, (q, relevant) in enumerate(questions):
            order = list(pipes) if n % 2 == 0 else list(reversed(pipes))
            for name in order:
                t = time.perf_counter()
                res = await pipes[name].ask(q, collection=COLLECTION)
                rec = per[name]
                rec["e2e"].append((time.perf_counter() - t) * 1000)
                rec["statuses"][res.status] = rec["statuses"].get(res.status, 0) + 1
                rec["rounds"].append(res.rounds)
                for st in stores[name].steps(res.run_id):
                    if st.duration_ms is not None:
                        rec["steps"][st.name].append(st.duration_ms)
                ans = res.answer
                if ans is not None and ans.error is None and ans.text:
                    rec["answered"] += 1
                    docs = {c.source.removeprefix("scifact/") for c in ans.citations}
                    rec["cited_relevant"] += bool(docs & relevant)
                if res.judge is not None and not res.judge.skipped:
                    rec["passed"] += bool(res.judge.passed)
                    rec["faithfulness"].append(res.judge.faithfulness or 0.0)
        for s in stores.values():
            s.close()
    out: dict = {}
    for name, rec in per.items():
        nq = len(questions)
        out.setdefault("configs", {})
        out["configs"][name] = {
            "questions": nq,
            "e2e_p50_ms": round(pct(rec["e2e"], 50), 1), "e2e_p95_ms": round(pct(rec["e2e"], 95), 1),
            "steps": {s: {"calls": len(v), "p50_ms": round(pct(v, 50), 1), "p95_ms": round(pct(v, 95), 1)}
                      for s, v in rec["steps"].items() if v},
            "answered": round(rec["answered"] / nq, 3),
            "cites_relevant_abstract": round(rec["cited_relevant"] / nq, 3),
            "judge_pass_rate": round(rec["passed"] / nq, 3),
            "mean_faithfulness": round(statistics.mean(rec["faithfulness"]), 3) if rec["faithfulness"] else None,
            "mean_rounds": round(statistics.mean(rec["rounds"]), 2),
            "statuses": rec["statuses"],
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="keep the index here and reuse it")
    ap.add_argument("--questions", type=int, default=40, help="questions per configuration (SciFact claims with "
                                                              "evidence, in id order)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ask.json")
    args = ap.parse_args()
    console = Console()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="guardrag-ask-"))
    # SciFact claims are medical: the risk policy would hold every answer for a person. The bench measures the
    # machine, so approval is off here.
    settings = Settings(data_dir=work, retrieval=RetrievalSettings(max_k=100),
                        approval=ApprovalSettings(enabled=False), cache=CacheSettings(enabled=False))
    ingest_s = ensure_index(settings, console)
    corpus, queries, qrels = load_scifact(DEFAULT_DATA)
    del corpus
    qids = sorted(queries, key=lambda q: int(q))[: args.questions + args.warmup]
    questions = [(queries[q], set(qrels[q])) for q in qids]
    runs_dir = Path(tempfile.mkdtemp(prefix="guardrag-ask-runs-"))
    configs = {
        "full": settings.model_copy(update={"agent": AgentSettings(state_db=runs_dir / "full.sqlite")}),
        "single-pass": settings.model_copy(update={"agent": AgentSettings(
            state_db=runs_dir / "single.sqlite", use_graph=False, max_rounds=0)}),
    }
    t = time.perf_counter()
    measured = anyio.run(run, settings, configs, questions[args.warmup:], args.warmup)
    res = measured["configs"]
    wall = round(time.perf_counter() - t, 1)

    table = Table(title=f"guardrag ask on SciFact ({len(questions) - args.warmup} questions, offline backends)")
    table.add_column("step")
    for name in res:
        table.add_column(f"{name} p50 ms", justify="right")
        table.add_column(f"{name} p95 ms", justify="right")
    for step in (*STEPS, "end to end"):
        row = [step]
        for r in res.values():
            s = {"p50_ms": r["e2e_p50_ms"], "p95_ms": r["e2e_p95_ms"]} if step == "end to end" else r["steps"].get(step)
            row += [f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}"] if s else ["-", "-"]
        table.add_row(*row)
    console.print(table)
    q = Table(title="answer quality")
    q.add_column("config")
    for col in ("answered", "cites a relevant abstract", "judge pass rate", "mean faithfulness", "mean rounds"):
        q.add_column(col, justify="right")
    for name, r in res.items():
        q.add_row(name, f"{r['answered']:.3f}", f"{r['cites_relevant_abstract']:.3f}", f"{r['judge_pass_rate']:.3f}",
                  f"{r['mean_faithfulness']}", f"{r['mean_rounds']}")
    console.print(q)
    console.print("the semantic cache (off here) is measured end to end by bench/cache.py")
    try:
        import os

        load = os.getloadavg()
    except OSError:
        load = None
    payload = {"benchmark": "ask", "data": "scifact (dev, train split)", "collection": COLLECTION,
               "ingest_s": ingest_s, "wall_s": wall, "load_avg": load, "machine": platform.platform(),
               "python": platform.python_version(), "configs": res}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.out} (load average {load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
