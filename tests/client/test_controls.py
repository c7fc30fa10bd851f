"""Production controls of the orchestrator (issue 7): cost accounting and budgets, the answer chain's fallbacks,
human approval, the audit trail and the stats, through real retrieval and judge servers over stdio.

Model backends are a local fake chat-completions server on 127.0.0.1 (a test double, scripted per test)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from client.connect import call
from client.pipeline import Decision, Pipeline, ServerPool
from client.state import RunStore, Usage, default_db_path
from client.stats import compute_stats
from core.settings import (
    AgentSettings,
    ApprovalSettings,
    CacheSettings,
    CostSettings,
    LLMSettings,
    ModelEndpoint,
    ModelPrice,
    RetrievalSettings,
    Settings,
)
from tests.conftest import server_env
from tests.fakes.openai_compatible import FakeChatServer, Reply

pytestmark = pytest.mark.anyio

DOCS = {
    "rotation.md": "# Rotating API keys\n\nTo rotate an API key without downtime, create a second key first, deploy it "
                   "to every service, and only then revoke the old key.\n\nKeys expire after 90 days.\n",
    "pain-relief.md": "# Pain relief\n\nThe usual adult dosage of ibuprofen is 200 to 400 mg every four to six hours, "
                      "at most 1200 mg a day without a doctor's advice.\n",
}
ROTATE = "How do I rotate an API key without downtime?"
DOSAGE = "What is the usual adult dosage of ibuprofen?"
GOOD = json.dumps({"answer": "Create a second key, deploy it, then revoke the old key [1].", "citations": [1],
                   "insufficient": False})


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def base(tmp_path_factory, model_dir) -> Settings:
    tmp = tmp_path_factory.mktemp("controls")
    docs = tmp / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    return Settings(data_dir=tmp / "data", model_dir=model_dir, retrieval=RetrievalSettings(roots=[docs]),
                    agent=AgentSettings(use_graph=False), cache=CacheSettings(enabled=False))


@pytest.fixture(scope="module")
async def pool(base):
    async with ServerPool(env=server_env(base)) as p:
        res = await call(await p.get("retrieval"), "ingest_path", {"path": str(base.retrieval.roots[0])})
        assert res["added"] == 2
        yield p


@pytest.fixture()
def store(tmp_path):
    """A fresh run store per test (the day budget sums every run of the store)."""
    with RunStore(tmp_path / "runs.sqlite") as s:
        yield s


def with_(base: Settings, **update) -> Settings:
    return base.model_copy(update=update)


def model(url: str, *fallbacks: str, **price) -> dict:
    llm = LLMSettings(base_url=url, model="big", retries=0, timeout=5,
                      fallbacks=[ModelEndpoint(base_url=f, model=f"small{i}", retries=0, timeout=5)
                                 for i, f in enumerate(fallbacks)])
    return {"llm": llm, "cost": CostSettings(**price)}


USAGE = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}


# ------------------------------------------------------------------------------------------------ cost


async def test_cost_is_priced_per_model_and_recorded(base, pool, store):
    prices = {"prices": {"big": ModelPrice(input=2.0, output=10.0)}}
    with FakeChatServer([Reply(content=GOOD, usage=USAGE)]) as fake:
        res = await Pipeline(with_(base, **model(fake.base_url, **prices)), store, pool=pool).ask(ROTATE)
    assert res.status == "done" and res.answer.backend == "openai-compatible:big"
    expected = 1000 / 1e6 * 2.0 + 100 / 1e6 * 10.0
    assert res.cost == pytest.approx(expected)
    (row,) = store.usage(res.run_id)
    assert (row["model"], row["tokens_in"], row["tokens_out"], row["step"]) == ("openai-compatible:big", 1000, 100,
                                                                                 "answer")
    st = compute_stats(store)
    assert st.cost == pytest.approx(expected) and st.cost_by_model == {"openai-compatible:big": pytest.approx(expected)}
    assert st.steps["answer"].count == 1 and st.tools["retrieval/search"].count >= 1
    assert st.tools["judge/judge_all"].p95_ms is not None and st.unpriced_calls == 0


async def test_unpriced_model_is_reported(base, pool, store):
    with FakeChatServer([Reply(content=GOOD, usage=USAGE)]) as fake:
        res = await Pipeline(with_(base, **model(fake.base_url)), store, pool=pool).ask(ROTATE)
    assert res.cost == 0.0 and store.usage(res.run_id)[0]["priced"] == 0
    assert compute_stats(store).unpriced_calls == 1


async def test_run_budget_trips_the_cost_breaker(base, pool, store):
    prices = {"prices": {"big": ModelPrice(input=2.0, output=10.0)}, "run_budget": 0.001}
    with FakeChatServer([Reply(content=GOOD, usage=USAGE)]) as fake:
        res = await Pipeline(with_(base, **model(fake.base_url, **prices)), store, pool=pool).ask(ROTATE)
    assert res.status == "tripped" and res.error.details["breaker"] == "cost_budget"
    assert res.error.details["scope"] == "run" and res.answer.error.code == "budget_exceeded"
    # What the failed step spent is still on the books.
    assert store.usage(res.run_id)[0]["cost"] == pytest.approx(0.003)


async def test_day_budget_stops_the_next_run_before_it_spends(base, pool, store):
    prices = {"prices": {"big": ModelPrice(input=2.0, output=10.0)}, "day_budget": 0.002}
    earlier = store.create_run("earlier")
    store.begin_step(earlier.id, 1, "answer", {})
    store.complete_step(earlier.id, 1, {}, usage=[Usage(model="openai-compatible:big", tokens_in=1, cost=0.0025)])
    with FakeChatServer([Reply(content=GOOD, usage=USAGE)]) as fake:
        res = await Pipeline(with_(base, **model(fake.base_url, **prices)), store, pool=pool).ask(ROTATE)
        assert fake.requests == []  # refused before the model was called
    assert res.status == "tripped" and res.error.details == {**res.error.details, "breaker": "cost_budget",
                                                              "scope": "day"}
    assert any(e.kind == "breaker" for e in store.audit(res.run_id))


# ------------------------------------------------------------------------------------------------ fallbacks


async def test_answer_chain_moves_down_on_failure_and_says_who_answered(base, pool, store):
    broken = [Reply(status=500), Reply(status=500)]
    with FakeChatServer(broken) as big, FakeChatServer([Reply(content="not json at all"),
                                                        Reply(content="still not json")]) as small0, \
            FakeChatServer([Reply(content=GOOD)]) as small1:
        res = await Pipeline(with_(base, **model(big.base_url, small0.base_url, small1.base_url)), store,
                             pool=pool).ask(ROTATE)
    assert res.status == "done" and res.answer.backend == "openai-compatible:small1"
    assert [(c.link, c.outcome) for c in res.answer.chain] == [
        ("openai-compatible:big", "failed"), ("openai-compatible:small0", "failed"),
        ("openai-compatible:small1", "answered")]
    assert "500" in res.answer.chain[0].reason and "JSON" in res.answer.chain[1].reason


async def test_uncited_model_answer_is_invalid_and_the_offline_answerer_takes_over(base, pool, store):
    uncited = json.dumps({"answer": "Just rotate it whenever.", "citations": [], "insufficient": False})
    with FakeChatServer([Reply(content=uncited)]) as fake:
        res = await Pipeline(with_(base, **model(fake.base_url)), store, pool=pool).ask(ROTATE)
    assert res.answer.backend == "offline-extractive" and "second key" in res.answer.text
    assert [c.outcome for c in res.answer.chain] == ["failed", "answered"]
    assert "without citing" in res.answer.chain[0].reason


class NoEmbedder(Pipeline):
    """The offline answerer's model is missing (as on a machine where `guardrag models install` never ran)."""

    def _get_embedder(self):
        return None


async def test_static_response_is_the_last_link(base, pool, store):
    with FakeChatServer([Reply(status=503)]) as fake:
        res = await NoEmbedder(with_(base, **model(fake.base_url)), store, pool=pool).ask(ROTATE)
    assert res.answer.backend == "static-response" and res.answer.text == base.agent.static_response
    assert [c.link for c in res.answer.chain] == ["openai-compatible:big", "offline-extractive", "static-response"]
    no_static = with_(base, agent=AgentSettings(use_graph=False, static_response=None))
    res = await NoEmbedder(no_static, store, pool=pool).ask(ROTATE)
    assert res.answer.error.code == "failed" and "offline-extractive" in res.answer.error.message


# ------------------------------------------------------------------------------------------------ approval


async def test_risky_question_waits_for_approval_then_is_released(base, pool, store):
    pipe = Pipeline(base, store, pool=pool)
    res = await pipe.ask(DOSAGE)
    assert res.status == "awaiting_approval" and res.answer.error.code == "awaiting_approval"
    assert res.answer.text is None and any("medical" in r for r in res.approval.reasons)
    assert pipe.result_of(res.run_id).answer.text is None  # the held answer is not served before approval
    done = pipe.settle(res.run_id, approve=True, by="dr.who", note="checked against the leaflet")
    assert done.status == "done" and "200 to 400 mg" in done.answer.text
    assert done.approval.decision == "approved" and done.approval.by == "dr.who" and done.approval.at
    assert store.get_run(res.run_id).status == "done"
    kinds = [e.kind for e in store.audit(res.run_id)]
    assert kinds[-2:] == ["approval", "run_finished"] and kinds.count("run_finished") == 2
    with pytest.raises(Exception, match="not awaiting approval"):
        pipe.settle(res.run_id, approve=False, by="someone")


async def test_rejection_and_an_approver_callback(base, pool, store):
    pipe = Pipeline(base, store, pool=pool)
    held = await pipe.ask(DOSAGE)
    rejected = pipe.settle(held.run_id, approve=False, by="lawyer", note="no medical advice")
    assert rejected.status == "rejected" and rejected.answer.error.code == "rejected"
    assert "no medical advice" in rejected.answer.error.message
    asked = []

    async def approver(req):
        asked.append(req)
        return Decision(approved=True, by="on-call")

    res = await Pipeline(base, store, pool=pool, approver=approver).ask(DOSAGE)
    assert res.status == "done" and "ibuprofen" in res.answer.text and res.approval.by == "on-call"
    assert asked and asked[0].answer and "medical" in asked[0].reasons[0]
    # A question with no risk asks nobody.
    asked.clear()
    plain = await Pipeline(base, store, pool=pool, approver=approver).ask(ROTATE)
    assert plain.status == "done" and not asked and plain.approval.required is False
    off = with_(base, approval=ApprovalSettings(enabled=False))
    assert (await Pipeline(off, store, pool=pool).ask(DOSAGE)).status == "done"


async def test_low_faithfulness_holds_the_answer(base, pool, store):
    wrong = json.dumps({"answer": "Keys never expire, so they never need to be rotated [1].", "citations": [1],
                        "insufficient": False})
    with FakeChatServer([Reply(content=wrong)]) as fake:
        res = await Pipeline(with_(base, **model(fake.base_url)), store, pool=pool).ask(ROTATE)
    assert res.status == "awaiting_approval" and res.judge.faithfulness_verdict == "unfaithful"
    assert [r for r in res.approval.reasons if r.startswith("low faithfulness")]
    # With a score floor instead of the judge's verdict, an answer at the floor passes.
    floor = with_(base, approval=ApprovalSettings(min_faithfulness=res.judge.faithfulness), **model("http://x"))
    with FakeChatServer([Reply(content=wrong)]) as fake:
        floor.llm.base_url = fake.base_url
        again = await Pipeline(floor, store, pool=pool).ask(ROTATE)
    assert again.status == "done" and not again.approval.required


# ------------------------------------------------------------------------------------------------ audit


async def test_audit_trail_explains_the_run_and_is_append_only(base, pool, store):
    q = "How do I rotate an API key without downtime? Reply to jane.roe@example.com"
    res = await Pipeline(base, store, pool=pool).ask(q)
    entries = store.audit(res.run_id)
    kinds = [e.kind for e in entries]
    assert kinds == ["run_started", "sources", "compression", "answer", "output_guard", "judge", "risk_review",
                     "run_finished"]
    start = entries[0].payload
    assert "jane.roe@example.com" not in json.dumps([e.payload for e in entries])  # PII stored anonymised
    assert "<EMAIL_ADDRESS>" in start["question"] and len(start["question_sha256"]) == 64
    assert start["versions"]["pipeline"] and start["answer_prompt_sha256"]
    used = entries[1].payload["used"]
    import hashlib
    run = store.steps(res.run_id)
    texts = {i["chunk_id"]: i["text"] for i in next(s for s in run if s.name == "select").output["items"]}
    assert used and all(u["sha256"] == hashlib.sha256(texts[u["chunk_id"]].encode()).hexdigest() for u in used)
    judge = entries[5].payload
    assert judge["rubrics"] and all("@" in r for r in judge["rubrics"])
    with sqlite3.connect(store.path) as raw, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("UPDATE audit SET kind = 'x'")
    with sqlite3.connect(store.path) as raw, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM audit")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_approval_audit_and_stats(base, tmp_path, monkeypatch):
    """Through the CLI: `ask` asks at the terminal (--ask-approval), `runs approve` settles a held run, `audit show
    --json` exports the trail, `stats --json` reads the store."""
    from client.cli import app

    runner = CliRunner()
    for key, value in server_env(base).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GUARDRAG_AGENT__USE_GRAPH", "false")
    monkeypatch.setenv("GUARDRAG_AGENT__STATE_DB", str(tmp_path / "cli-runs.sqlite"))
    from core.settings import get_settings

    get_settings.cache_clear()
    try:
        held = runner.invoke(app, ["ask", DOSAGE, "--no-input", "--json"])
        assert held.exit_code == 1, held.output
        run_id = json.loads(held.stdout)["run_id"]
        assert json.loads(held.stdout)["status"] == "awaiting_approval"
        approved = runner.invoke(app, ["runs", "approve", run_id, "--by", "ops", "--json"])
        assert approved.exit_code == 0, approved.output
        assert "ibuprofen" in json.loads(approved.stdout)["answer"]["text"]

        asked = runner.invoke(app, ["ask", DOSAGE, "--ask-approval"], input="n\ntoo risky\n", terminal_width=200)
        assert "approval needed" in asked.output and "Release this answer?" in asked.output
        assert "rejected" in asked.output and asked.exit_code == 1

        trail = runner.invoke(app, ["audit", "show", run_id, "--json"])
        assert trail.exit_code == 0
        kinds = [e["kind"] for e in json.loads(trail.stdout)["entries"]]
        assert "approval" in kinds and kinds[0] == "run_started"

        st = runner.invoke(app, ["stats", "--json"])
        data = json.loads(st.stdout)
        assert data["runs"] == 2 and data["approvals"] == {"approved": 1, "rejected": 1}
        assert data["steps"]["retrieve"]["count"] == 2 and data["runs_e2e"]["p50_ms"] > 0
        assert runner.invoke(app, ["runs", "approve", "nope"]).exit_code == 1
    finally:
        get_settings.cache_clear()
    with RunStore(default_db_path(base.data_dir, tmp_path / "cli-runs.sqlite")) as s:
        assert s.get_run(run_id).status == "done"


# ------------------------------------------------------------------------------------------------ cache


async def test_semantic_cache_serves_a_paraphrase_until_an_ingest(base, pool, store, tmp_path, monkeypatch):
    import client.pipeline as pipeline_module

    cached = with_(base, cache=CacheSettings(path=tmp_path / "cache.sqlite"))
    pipe = Pipeline(cached, store, pool=pool)
    first = await pipe.ask(ROTATE)
    assert first.status == "done" and not first.answer.cached and first.judge.passed
    store.flush_audit()
    anonymised: list[str] = []
    real_anon = pipeline_module._anon
    monkeypatch.setattr(pipeline_module, "_anon", lambda text: anonymised.append(text) or real_anon(text))
    paraphrase = "How can I rotate an API key with no downtime?"
    para = await pipe.ask(paraphrase)
    assert para.answer.cached and para.answer.cached_from == first.run_id and para.answer.text == first.answer.text
    assert [s.name for s in store.steps(para.run_id)] == ["cache"]  # nothing else ran
    # The hit's audit trail: the cached question and answer come anonymised from the first run's trail; only the
    # new question is scanned.
    trail, orig = store.audit(para.run_id), {e.kind: e.payload for e in store.audit(first.run_id)}
    assert [e.kind for e in trail] == ["run_started", "cache_hit", "run_finished"]
    assert trail[1].payload["from_run"] == first.run_id
    assert trail[1].payload["scope"]["embedder"] == pipe._query_embedder().model_sha256  # the int8 model's
    assert trail[1].payload["cached_question"] == orig["run_started"]["question"]
    assert trail[2].payload["answer"] == orig["run_finished"]["answer"] and trail[2].payload["answer"]
    assert anonymised == [paraphrase]
    monkeypatch.setattr(pipeline_module, "_anon", real_anon)
    # A different question, and --no-cache, are not served from the cache.
    assert not (await pipe.ask("When do keys expire?")).answer.cached
    assert not (await pipe.ask(ROTATE, use_cache=False)).answer.cached
    # A held (risky) answer is never cached.
    await pipe.ask(DOSAGE)
    assert (await pipe.ask(DOSAGE)).status == "awaiting_approval"
    # Any ingest changes the collection's index version: the cached answer is no longer served.
    await call(await pool.get("retrieval"), "ingest_text", {"text": "Rotated keys are logged in the audit log.",
                                                            "doc_id": "audit-note"})
    after = await pipe.ask(ROTATE)
    assert after.status == "done" and not after.answer.cached
    assert (await pipe.ask(ROTATE)).answer.cached  # ... until the answer is cached again under the new version
    st = compute_stats(store)
    assert st.cache_hits == 2 and st.cache_lookups == 7


def test_cache_and_compression_embed_with_the_int8_model_else_the_float_one(base, store, tmp_path, caplog):
    from core.models import MODEL_FILES, model_files_dir

    pipe = Pipeline(base, store)
    q = pipe._query_embedder()
    assert q.quantized and q.onnx_file.name == "model_int8.onnx" and pipe._query_embedder() is q
    assert not pipe._topic_classifier().embedder.quantized  # the topic threshold was tuned on the float model
    assert pipe._get_memo().inner.quantized  # compression and the offline answerer
    assert not Pipeline(with_(base, cache=CacheSettings(quantized=False)), store)._query_embedder().quantized
    assert not Pipeline(with_(base, agent=AgentSettings(quantized=False)), store)._get_memo().inner.quantized
    # a model dir without the int8 copy (an install that could not quantize): the float model, and a warning
    folder = model_files_dir(tmp_path / "models")
    folder.mkdir(parents=True)
    for name in MODEL_FILES:
        (folder / name).symlink_to(q.path / name)
    with caplog.at_level("WARNING", logger="guardrag"):
        bare = Pipeline(with_(base, model_dir=tmp_path / "models"), store)
        fallback, memo = bare._query_embedder(), bare._get_memo()
    assert not fallback.quantized and fallback.onnx_file == folder / "model.onnx" and not memo.inner.quantized
    assert "float model" in caplog.text and "model_int8.onnx" in caplog.text
