"""`guardrag eval`: the pipeline over the repository's question set (eval/questions.jsonl on examples/), reports,
and the threshold gate, through real servers over stdio."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from client.connect import call, connect
from client.eval_runs import (
    EvalReport,
    QuestionResult,
    Thresholds,
    check,
    load_questions,
    summarize,
)
from core.errors import InvalidInput
from core.settings import RetrievalSettings, Settings, get_settings
from tests.conftest import server_env

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ROOT / "eval" / "questions.jsonl"
THRESHOLDS = ROOT / "eval" / "thresholds.toml"


@pytest.fixture()
def cli_env(tmp_path, model_dir, monkeypatch):
    settings = Settings(data_dir=tmp_path / "data", model_dir=model_dir,
                        retrieval=RetrievalSettings(roots=[ROOT / "examples"]))
    env = server_env(settings)

    async def ingest() -> None:
        async with connect("retrieval", env=env) as client:
            await call(client, "ingest_path", {"path": str(ROOT / "examples"), "collection": "examples"})

    anyio.run(ingest)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_eval_reports_and_fails_when_a_threshold_is_raised(cli_env):
    from client.cli import app

    limits = tomllib.loads(THRESHOLDS.read_text())
    raised = cli_env / "raised.toml"
    # One limit above anything measurable: the gate must fail, and say which metric failed.
    raised.write_text(THRESHOLDS.read_text().replace("[max]", "mean_relevance = 1.01\n\n[max]"))
    report_json, report_html = cli_env / "report.json", cli_env / "report.html"
    res = CliRunner().invoke(app, ["eval", str(QUESTIONS), "--thresholds", str(raised), "--json", str(report_json),
                                   "--html", str(report_html)], terminal_width=200)
    assert res.exit_code == 1, res.output
    assert "evaluation failed" in res.output and "mean_relevance" in res.output
    report = EvalReport.model_validate_json(report_json.read_text())
    assert report.n == len(QUESTIONS.read_text().splitlines()) and not report.passed
    assert [v.metric for v in report.verdicts if not v.ok] == ["mean_relevance"]
    page = report_html.read_text()
    assert "FAILED" in page and "<svg" in page and "p50 latency per step" in page
    # The repository's own thresholds hold on the same measurements (what CI gates on).
    gated = check(report.model_copy(update={"verdicts": [], "passed": True}), Thresholds.model_validate(limits))
    assert gated.passed, [v for v in gated.verdicts if not v.ok]
    assert report.metrics["source_hit_rate"] >= limits["min"]["source_hit_rate"]
    assert all(r.run_id and r.steps_ms.get("retrieve") for r in report.results)


def _result(**kw) -> QuestionResult:
    base = {"id": "q", "question": "q?", "run_id": "r", "status": "done", "answered": True, "e2e_ms": 10.0}
    return QuestionResult(**{**base, **kw})


def test_check_bounds_and_unknown_metrics():
    report = summarize([_result(faithfulness=0.9, passed=True, source_hit=True),
                        _result(faithfulness=0.5, passed=False, source_hit=False, status="failed", answered=False)])
    assert report.metrics["mean_faithfulness"] == 0.7 and report.metrics["error_rate"] == 0.5
    ok = check(report, Thresholds(min={"mean_faithfulness": 0.7}, max={"error_rate": 0.5}))
    assert ok.passed and all(v.ok for v in ok.verdicts)
    bad = check(report, Thresholds(min={"mean_faithfulness": 0.71}))
    assert not bad.passed and bad.verdicts[0].value == 0.7
    with pytest.raises(InvalidInput, match="no such metric"):
        check(report, Thresholds(min={"mean_faithfulnes": 0.1}))
    # A metric with no value (no expected sources anywhere) fails a threshold on it rather than passing silently.
    none = summarize([_result()])
    assert not check(none, Thresholds(min={"source_hit_rate": 0.1})).passed


def test_bad_question_file_names_the_line(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "fine"}) + "\n" + json.dumps({"question": ""}) + "\n")
    with pytest.raises(InvalidInput, match="line 2"):
        load_questions(f)
    f.write_text("\n")
    with pytest.raises(InvalidInput, match="no question"):
        load_questions(f)
