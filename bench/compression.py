#!/usr/bin/env python3
"""Context compression benchmark on SciFact (dev split): context tokens and judged faithfulness, both ways in one run.

    .venv/bin/python bench/compression.py [--data ../shared/data/retrieval/scifact] [--questions 150]
                                          [--distractors 1200] [--seed 7]

For each sampled dev claim, in process and on one index:
1. retrieve: hybrid search (``RetrievalEngine.search``, k = ``agent.k``), then select the hits in rank order
   within ``agent.context_tokens`` as the pipeline's select step does (no critique step: hits keep their rank);
2. **full**: the offline extractive answer over the selected items, judged for faithfulness
   (``JudgeEngine.judge_faithfulness``) against the items it was given;
3. **compressed**: ``client.compress.compress`` over the same items (budget ``agent.context_tokens``, so any saving
   comes from dropping irrelevant and duplicate sentences, not from a tighter budget), the same answerer over the
   compressed items, judged against the compressed items (what the pipeline's judge step sees) and, as a stricter
   check, against the full selected items.
4. citations: every span either answer cites is looked up in the source document's text as the retrieval server
   loaded it (``servers.retrieval.loaders.parse_text``: its provenance coordinates) and must be the quoted sentence.

Sentences are embedded with ``--sentence-model`` (default ``int8``, the pipeline's default ``agent.quantized``; the
judge always uses the float model). Sentence vectors are computed once per claim (``client.compress.MemoEmbedder``: compress embeds every sentence of
the selected items, both answers reuse those vectors), so the two answers rank sentences with identical vectors;
``compress_ms`` is measured first, cold, and includes embedding all the sentences.

Reported: median / mean context tokens both ways, faithfulness (mean over the claims answered both ways, and the
answer rate of each), how often the answer is the same, and citation validity: every span the compressed answer
cites is checked against the source document's text.

Corpus: the documents relevant to the sampled claims plus ``--distractors`` other documents drawn at random (seeded)
from the SciFact corpus, so the index is small enough to build in a minute on a laptop (``--distractors -1`` for the
whole corpus). Claims are the dev (train-split) queries of ``../shared/data/retrieval/README.md``; the data is read
in place, never copied. Prints a table and writes ``bench/results/compression.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retrieval import COLLECTION, DEFAULT_DATA, load_scifact  # noqa: E402  (bench/retrieval.py: one loader)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import core  # noqa: E402,F401
from client.answer import ContextItem, extractive_answer  # noqa: E402
from client.compress import CompressSettings, MemoEmbedder, compress  # noqa: E402
from core.embedder import get_embedder  # noqa: E402
from core.settings import Settings  # noqa: E402
from servers.judge.engine import JudgeEngine  # noqa: E402
from servers.retrieval.engine import RetrievalEngine, TextItem  # noqa: E402
from servers.retrieval.loaders import parse_text  # noqa: E402

def select(engine: RetrievalEngine, question: str, k: int, budget: int, count) -> list[ContextItem]:
    """The pipeline's retrieve + select steps, in process (hits in rank order within the token budget)."""
    res = engine.search(COLLECTION, question, k=k, mode="hybrid")
    items, used = [], 0
    for h in res.hits:
        if h.text is None:
            continue
        n = count(h.text)
        if used + n > budget:
            continue
        used += n
        items.append(ContextItem(chunk_id=h.chunk_id, doc_id=h.provenance.doc_id, source=h.provenance.source,
                                 title=h.provenance.title, text=h.text, start_char=h.provenance.start_char,
                                 guard=h.guard.status, score=h.score, tokens=n))
    return items


def citations_valid(answer, docs: dict[str, str]) -> tuple[int, int]:
    """(valid, checked): a cited span is valid when the document's text there is the sentence the answer quotes."""
    if answer.error is not None or not answer.text:
        return 0, 0
    quoted = {}
    for part in answer.text.split("] "):
        part = part.rstrip("]")
        if " [" in part:
            sent, n = part.rsplit(" [", 1)
            quoted.setdefault(int(n), []).append(sent)
    ok = total = 0
    for c in answer.citations:
        if c.span is None or c.doc_id not in docs:
            continue
        total += 1
        src = " ".join(docs[c.doc_id][c.span[0]:c.span[1]].split())
        ok += any(src == q for q in quoted.get(c.n, []))
    return ok, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--questions", type=int, default=150, help="dev claims sampled (seeded)")
    ap.add_argument("--distractors", type=int, default=1200, help="random non-relevant docs added (-1 = all)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the index here and reuse it (only with the same --questions/--distractors/--seed)")
    ap.add_argument("--sentence-model", choices=("int8", "float"), default="int8",
                    help="the model compress and the answerer embed sentences with (the pipeline's default: int8, "
                         "agent.quantized); the judge always uses the float model")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compression.json")
    args = ap.parse_args()
    console = Console(width=120)
    corpus, queries, qrels = load_scifact(args.data)
    rng = random.Random(args.seed)
    qids = sorted(queries)
    rng.shuffle(qids)
    qids = qids[: args.questions]
    relevant = {d for q in qids for d in qrels[q]}
    others = [d["_id"] for d in corpus if d["_id"] not in relevant]
    rng.shuffle(others)
    chosen = relevant | set(others if args.distractors < 0 else others[: args.distractors])
    docs = [d for d in corpus if d["_id"] in chosen]
    # citation spans are in the retrieval server's provenance coordinates: the document's text *as loaded*
    doc_text = {d["_id"]: parse_text(d["text"] or d["title"], "text").text for d in docs}

    work = args.workdir or Path(tempfile.mkdtemp(prefix="guardrag-compress-"))
    settings = Settings(data_dir=work)
    cfg = settings.agent
    engine = RetrievalEngine(settings)
    engine.warm_up()
    emb = engine.embedder
    if COLLECTION not in {c.name for c in engine.list_collections()}:
        console.print(f"ingesting {len(docs)} SciFact documents ({len(relevant)} relevant + distractors) ...")
        t = time.perf_counter()
        engine.ingest_texts(COLLECTION, [TextItem(text=d["text"] or d["title"], doc_id=d["_id"], title=d["title"],
                                                  source=f"scifact/{d['_id']}") for d in docs])
        console.print(f"  done in {time.perf_counter() - t:.1f} s")
    judge = JudgeEngine(settings, embedder=emb, backends=[])
    judge.warm_up()
    sent_emb = get_embedder(settings.model_dir, threads=settings.embed_threads,
                            quantized=args.sentence_model == "int8")
    csettings = CompressSettings()

    rows = []
    t_compress = []
    for n, qid in enumerate(qids):
        q = queries[qid]
        items = select(engine, q, cfg.k, cfg.context_tokens, emb.count_tokens)
        if not items:
            continue
        memo = MemoEmbedder(sent_emb)  # per claim: compress embeds the sentences once, both answers reuse them
        t = time.perf_counter()
        comp = compress(q, items, memo, budget_tokens=cfg.context_tokens, settings=csettings)
        t_compress.append((time.perf_counter() - t) * 1000)
        full = extractive_answer(q, items, memo, max_sentences=cfg.answer_sentences, min_score=cfg.min_answer_score)
        small = extractive_answer(q, comp.items, memo, max_sentences=cfg.answer_sentences,
                                  min_score=cfg.min_answer_score)
        row = {"qid": qid, "tokens_full": sum(i.tokens for i in items), "tokens_compressed": comp.tokens_after,
               "items_full": len(items), "segments": len(comp.items),
               "dropped": {r: sum(d.reason == r for d in comp.dropped) for r in ("irrelevant", "duplicate", "budget",
                                                                                 "quarantined")},
               "answered_full": full.error is None, "answered_compressed": small.error is None,
               "same_answer": full.text == small.text}
        if full.error is None:
            row["faith_full"] = judge.judge_faithfulness(full.text, [i.text for i in items], q).score
        if small.error is None:
            row["faith_compressed"] = judge.judge_faithfulness(small.text, [i.text for i in comp.items], q).score
            row["faith_compressed_vs_full_context"] = judge.judge_faithfulness(small.text, [i.text for i in items],
                                                                               q).score
        ok, total = citations_valid(small, doc_text)
        ok_f, total_f = citations_valid(full, doc_text)
        row["citations_valid"], row["citations_checked"] = ok, total
        row["citations_valid_full"], row["citations_checked_full"] = ok_f, total_f
        rows.append(row)
        if (n + 1) % 25 == 0:
            console.print(f"  {n + 1}/{len(qids)} claims")

    tf = [r["tokens_full"] for r in rows]
    tc = [r["tokens_compressed"] for r in rows]
    both = [r for r in rows if "faith_full" in r and "faith_compressed" in r]
    mean = statistics.mean
    faith_full = mean(r["faith_full"] for r in both) if both else 0.0
    faith_comp = mean(r["faith_compressed"] for r in both) if both else 0.0
    faith_comp_full = mean(r["faith_compressed_vs_full_context"] for r in both) if both else 0.0
    med_f, med_c = statistics.median(tf), statistics.median(tc)
    reduction = 1 - med_c / med_f if med_f else 0.0
    cit_ok, cit_n = sum(r["citations_valid"] for r in rows), sum(r["citations_checked"] for r in rows)
    cit_ok_f, cit_n_f = sum(r["citations_valid_full"] for r in rows), sum(r["citations_checked_full"] for r in rows)
    t_compress.sort()
    summary = {
        "claims": len(rows),
        "median_tokens": {"full": med_f, "compressed": med_c, "reduction": round(reduction, 4)},
        "mean_tokens": {"full": round(mean(tf), 1), "compressed": round(mean(tc), 1),
                        "reduction": round(1 - mean(tc) / mean(tf), 4)},
        "answer_rate": {"full": round(mean(r["answered_full"] for r in rows), 4),
                        "compressed": round(mean(r["answered_compressed"] for r in rows), 4)},
        "faithfulness_answered_both": {"n": len(both), "full": round(faith_full, 4),
                                       "compressed": round(faith_comp, 4),
                                       "compressed_judged_on_full_context": round(faith_comp_full, 4),
                                       "drop": round(faith_full - faith_comp, 4)},
        "same_answer_rate": round(mean(r["same_answer"] for r in rows), 4),
        "citations": {"compressed": {"valid": cit_ok, "checked": cit_n}, "full": {"valid": cit_ok_f,
                                                                                  "checked": cit_n_f}},
        "dropped_sentences": {k: sum(r["dropped"][k] for r in rows) for k in rows[0]["dropped"]} if rows else {},
        "compress_ms": {"p50": round(t_compress[len(t_compress) // 2], 1),
                        "p95": round(t_compress[int(0.95 * (len(t_compress) - 1))], 1)} if t_compress else {},
    }
    acc = {
        "median context tokens fall by >= 40%": reduction >= 0.40,
        "faithfulness drops by <= 0.02": faith_full - faith_comp <= 0.02,
        "every cited span of the compressed answer is the quoted source text": cit_ok == cit_n,
    }

    table = Table(title=f"Context compression on SciFact dev ({len(rows)} claims, {len(docs)} docs indexed)")
    for col in ("", "full context", "compressed"):
        table.add_column(col)
    table.add_row("median tokens", f"{med_f:.0f}", f"{med_c:.0f} ({-reduction:+.1%})")
    table.add_row("mean tokens", f"{mean(tf):.0f}", f"{mean(tc):.0f}")
    table.add_row("answer rate", f"{summary['answer_rate']['full']:.3f}", f"{summary['answer_rate']['compressed']:.3f}")
    table.add_row(f"faithfulness (answered both, n={len(both)})", f"{faith_full:.4f}", f"{faith_comp:.4f}")
    table.add_row("  compressed answer judged on the full context", "", f"{faith_comp_full:.4f}")
    table.add_row("same answer text", "", f"{summary['same_answer_rate']:.3f}")
    table.add_row("valid cited spans", f"{cit_ok_f}/{cit_n_f}", f"{cit_ok}/{cit_n}")
    table.add_row("compress() ms p50 / p95", "", f"{summary['compress_ms'].get('p50')} / "
                  f"{summary['compress_ms'].get('p95')}")
    console.print(table)
    console.print("sentences dropped:", summary["dropped_sentences"])
    at = Table(title="Acceptance")
    at.add_column("check")
    at.add_column("result")
    for k, v in acc.items():
        at.add_row(k, "[green]pass[/]" if v else "[red]FAIL[/]")
    console.print(at)

    out = {
        "dataset": f"SciFact dev (train split minus test-overlapping claims): {len(rows)} claims sampled with seed "
                   f"{args.seed}; index of {len(docs)} docs ({len(relevant)} relevant to them + "
                   f"{len(docs) - len(relevant)} random distractors)",
        "protocol": "hybrid search k=agent.k, select in rank order within agent.context_tokens; offline extractive "
                    "answer over the selected vs the compressed items (compress budget = agent.context_tokens); "
                    "offline judge faithfulness against the contexts each answer was given",
        "agent": {"k": cfg.k, "context_tokens": cfg.context_tokens, "answer_sentences": cfg.answer_sentences,
                  "min_answer_score": cfg.min_answer_score},
        "compress_settings": csettings.model_dump(),
        "sentence_model": args.sentence_model,
        "summary": summary, "acceptance": acc,
        "rubric_in_use": judge.rubric("faithfulness").tag,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": [round(x, 2) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%d"),
        "per_claim": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(acc.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
