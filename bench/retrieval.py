#!/usr/bin/env python3
"""Retrieval benchmark on BEIR SciFact (dev split): quality, ingest throughput and MCP search latency.

    .venv/bin/python bench/retrieval.py [--data ../shared/data/retrieval/scifact] [--queries N]

Measures, in one run and on one index:
* nDCG@10 and Recall@100 (document level) for BM25 alone, vector alone and hybrid (RRF);
* ingest throughput (chunks/s) of guardrag's ingest against a bare ``collection.add`` of the same
  chunk texts with the same embedder (the baseline does no chunking, BM25, journal or checks);
* ``search`` tool-call latency p50/p95 over stdio through the official MCP Python client, guards on
  against guards off in the same run (two servers on one index, calls alternating).

Prints a table and writes ``bench/results/retrieval.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import shutil
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

import core  # noqa: E402,F401
from core.settings import RetrievalSettings, Settings  # noqa: E402
from servers.retrieval.engine import RetrievalEngine, TextItem, index_text  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "retrieval" / "scifact"
COLLECTION = "scifact"


def load_scifact(folder: Path):
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh]
    queries = {}
    for line in (folder / "queries.jsonl").read_text().splitlines():
        rec = json.loads(line)
        queries[rec["_id"]] = rec["text"]
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.strip().split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    queries = {q: t for q, t in queries.items() if q in qrels}
    return corpus, queries, qrels


def ndcg_at(ranked: list[str], rel: dict[str, int], k: int) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], rel: dict[str, int], k: int) -> float:
    return len(set(ranked[:k]) & {d for d, r in rel.items() if r > 0}) / max(1, sum(r > 0 for r in rel.values()))


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def doc_ranking(engine: RetrievalEngine, query: str, mode: str, depth: int = 100) -> list[str]:
    res = engine.search(COLLECTION, query, k=depth, mode=mode, unique_documents=True)
    return [h.provenance.doc_id for h in res.hits]


def _items(corpus: list[dict]) -> list[TextItem]:
    return [TextItem(text=d["text"] or d["title"], doc_id=d["_id"], title=d["title"], source=f"scifact/{d['_id']}")
            for d in corpus]


def bench_ingest(corpus: list[dict], model_dir: Path) -> dict:
    """guardrag's ingest vs a bare ``collection.add`` of the same chunk texts with the same embedder.

    Both start from an empty store in a fresh directory; guardrag's figure includes parsing, chunking,
    BM25 indexing, the journal and the checks, the baseline only embedding and adding."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    work = Path(tempfile.mkdtemp(prefix="guardrag-ingest-"))
    try:
        engine = RetrievalEngine(Settings(data_dir=work / "guardrag", model_dir=model_dir))
        engine.warm_up()
        t = time.perf_counter()
        res = engine.ingest_texts(COLLECTION, _items(corpus))
        ours = time.perf_counter() - t
        got = engine._collection(COLLECTION).get(include=["documents", "metadatas"])
        texts = [index_text(d, m) for d, m in zip(got["documents"], got["metadatas"], strict=True)]
        client = chromadb.PersistentClient(path=str(work / "bare"), settings=ChromaSettings(anonymized_telemetry=False))
        bare = client.create_collection("bare", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
        t = time.perf_counter()
        for start in range(0, len(texts), 256):
            part = texts[start : start + 256]
            bare.add(ids=[str(start + i) for i in range(len(part))], embeddings=engine.embedder.embed(part),
                     documents=part)
        base = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"documents": res.added, "chunks": res.chunks_written, "guardrag_s": round(ours, 2), "bare_s": round(base, 2),
            "guardrag_chunks_per_s": round(res.chunks_written / ours, 1),
            "bare_chunks_per_s": round(len(texts) / base, 1),
            "ratio": round((res.chunks_written / ours) / (len(texts) / base), 3)}


async def bench_mcp_latency(settings: Settings, queries: list[str], warmup: list[str]) -> dict:
    """Steady-state ``search`` latency over stdio, after ``warmup`` calls; the cold start is reported apart.

    Two servers run side by side on the same index, one with the guards on (the default) and one with
    them off, and the calls alternate between them query by query, so a busy machine slows both alike."""
    from contextlib import AsyncExitStack

    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    base = {k: v for k, v in os.environ.items()}
    base.update({"GUARDRAG_DATA_DIR": str(settings.data_dir), "GUARDRAG_MODEL_DIR": str(settings.model_dir)})
    configs = {"guards_on": {"GUARDRAG_GUARDS__ENABLED": "true"}, "guards_off": {"GUARDRAG_GUARDS__ENABLED": "false"}}
    lat: dict[str, list[float]] = {name: [] for name in configs}
    server_ms: dict[str, list[float]] = {name: [] for name in configs}
    guard_ms: dict[str, list[float]] = {name: [] for name in configs}  # the server's own guard step
    cold: dict[str, float] = {}
    async with AsyncExitStack() as stack:
        clients = {}
        for name, extra in configs.items():
            params = StdioServerParameters(command=sys.executable, args=["-m", "servers.retrieval.server"],
                                           env={**base, **extra}, cwd=str(ROOT))
            t = time.perf_counter()
            clients[name] = await stack.enter_async_context(Client(params))
            first = time.perf_counter()
            await clients[name].call_tool("search", {"query": warmup[0], "k": 10, "collection": COLLECTION})
            if name == "guards_on":
                cold = {"connect_ms": round((first - t) * 1000, 1),
                        "first_call_ms": round((time.perf_counter() - first) * 1000, 1)}
        for q in warmup[1:]:  # the servers finish loading in the background meanwhile
            for client in clients.values():
                await client.call_tool("search", {"query": q, "k": 10, "collection": COLLECTION})
        for n, q in enumerate(queries):
            order = list(clients) if n % 2 == 0 else list(reversed(clients))
            for name in order:
                t = time.perf_counter()
                res = await clients[name].call_tool("search", {"query": q, "k": 10, "collection": COLLECTION})
                lat[name].append((time.perf_counter() - t) * 1000)
                assert not res.is_error, res.content
                server_ms[name].append(res.structured_content["timings_ms"]["total"])
                guard_ms[name].append(res.structured_content["timings_ms"].get("guard", 0.0))
                want = "unscanned" if name == "guards_off" else ("clean", "flagged", "quarantined")
                assert all(h["guard"]["status"] in want for h in res.structured_content["hits"])

    def summary(name: str) -> dict:
        return {"calls": len(lat[name]), "p50_ms": round(pct(lat[name], 50), 2), "p95_ms": round(pct(lat[name], 95), 2),
                "p99_ms": round(pct(lat[name], 99), 2), "server_p50_ms": round(pct(server_ms[name], 50), 2),
                "server_p95_ms": round(pct(server_ms[name], 95), 2),
                "server_guard_step_p50_ms": round(pct(guard_ms[name], 50), 3),
                "server_guard_step_p95_ms": round(pct(guard_ms[name], 95), 3)}

    on, off = summary("guards_on"), summary("guards_off")
    return {**cold, "warmup_calls": len(warmup), **on, "guards_off": off,
            "guard_overhead_p50": round(on["p50_ms"] / off["p50_ms"] - 1, 4),
            "guard_overhead_p95": round(on["p95_ms"] / off["p95_ms"] - 1, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=0, help="evaluate only the first N queries (0 = all)")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--ingest-docs", type=int, default=1000, help="documents for the throughput comparison (0 = skip)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the index here and reuse it (skips ingest)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    args = ap.parse_args()
    console = Console()
    corpus, queries, qrels = load_scifact(args.data)
    qids = sorted(queries)[: args.queries or None]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="guardrag-bench-"))
    settings = Settings(data_dir=work, retrieval=RetrievalSettings(max_k=100))
    engine = RetrievalEngine(settings)
    engine.warm_up()
    ingest = None
    if args.ingest_docs:
        console.print(f"ingest throughput on the first {args.ingest_docs} documents (guardrag, then bare add) ...")
        ingest = bench_ingest(corpus[: args.ingest_docs], settings.model_dir)
    full_ingest_s = None
    if COLLECTION not in {c.name for c in engine.list_collections()}:
        console.print(f"ingesting all {len(corpus)} SciFact documents for the quality runs ...")
        t = time.perf_counter()
        engine.ingest_texts(COLLECTION, _items(corpus))
        full_ingest_s = round(time.perf_counter() - t, 1)
    quality = {}
    for mode in ("bm25", "vector", "hybrid"):
        t = time.perf_counter()
        nd, rc = [], []
        for qid in qids:
            ranked = doc_ranking(engine, queries[qid], mode)
            nd.append(ndcg_at(ranked, qrels[qid], 10))
            rc.append(recall_at(ranked, qrels[qid], 100))
        quality[mode] = {"ndcg@10": round(statistics.mean(nd), 4), "recall@100": round(statistics.mean(rc), 4),
                         "ms_per_query": round((time.perf_counter() - t) * 1000 / len(qids), 2)}
    texts = [queries[q] for q in qids]
    rescanned = engine.refresh_guard_scans(COLLECTION)  # a reused index may hold an older scanner's verdicts
    if rescanned:
        console.print(f"rescanned {rescanned} chunks with the current injection scanner")
    latency = anyio.run(bench_mcp_latency, settings, texts[: args.latency_queries], texts[-30:])
    best_single = max(quality["bm25"]["ndcg@10"], quality["vector"]["ndcg@10"])
    result = {
        "dataset": f"SciFact dev (train split minus test-overlapping claims): {len(qids)} queries, {len(corpus)} docs",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "quality": quality, "hybrid_gain_over_best_single": round(quality["hybrid"]["ndcg@10"] - best_single, 4),
        "ingest": ingest, "full_ingest_s": full_ingest_s, "mcp_search_latency": latency, "settings": settings.retrieval.model_dump(mode="json"),
    }
    table = Table(title="guardrag retrieval on SciFact (dev)")
    for col in ("mode", "nDCG@10", "Recall@100", "ms/query (engine)"):
        table.add_column(col)
    for mode, q in quality.items():
        table.add_row(mode, f"{q['ndcg@10']:.4f}", f"{q['recall@100']:.4f}", f"{q['ms_per_query']:.1f}")
    console.print(table)
    console.print(f"hybrid gain over best single leg: {result['hybrid_gain_over_best_single']:+.4f} nDCG@10")
    if ingest:
        console.print(f"ingest ({ingest['documents']} docs): {ingest['chunks']} chunks, guardrag {ingest['guardrag_chunks_per_s']} chunks/s vs bare "
                      f"collection.add {ingest['bare_chunks_per_s']} chunks/s (ratio {ingest['ratio']})")
    off = latency["guards_off"]
    console.print(f"search over stdio MCP ({latency['calls']} calls each): guards on p50 {latency['p50_ms']} ms, "
                  f"p95 {latency['p95_ms']} ms (server-side p95 {latency['server_p95_ms']} ms); guards off p50 "
                  f"{off['p50_ms']} ms, p95 {off['p95_ms']} ms; overhead p50 {latency['guard_overhead_p50']:+.1%}, "
                  f"p95 {latency['guard_overhead_p95']:+.1%}; the server's guard step itself: p50 "
                  f"{latency['server_guard_step_p50_ms']} ms, p95 {latency['server_guard_step_p95_ms']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
