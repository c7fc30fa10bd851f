"""The guardrag CLI end to end: it launches the retrieval server over stdio, as an IDE would."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from client.cli import app

runner = CliRunner()


@pytest.fixture
def cli_env(monkeypatch, settings, roots):
    monkeypatch.setenv("GUARDRAG_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("GUARDRAG_MODEL_DIR", str(settings.model_dir))
    monkeypatch.setenv("GUARDRAG_RETRIEVAL__ROOTS", json.dumps([str(roots)]))
    monkeypatch.setenv("GUARDRAG_CONFIG", str(settings.data_dir / "absent.toml"))
    from core.settings import get_settings

    get_settings.cache_clear()
    yield roots
    get_settings.cache_clear()


def test_models_status_reports_the_installed_model(cli_env):
    res = runner.invoke(app, ["models", "status"])
    assert res.exit_code == 0, res.output
    status = json.loads(res.stdout)
    assert status["installed"] is True and status["onnx_sha256"]


def test_ingest_then_search_over_mcp(cli_env):
    (cli_env / "handbook.md").write_text("# Handbook\n\n## Travel\n\nTrain tickets over 200 EUR need approval by a director.\n")
    (cli_env / "faq.txt").write_text("The cafeteria opens at 8:00 and closes at 15:00 on weekdays.\n")
    res = runner.invoke(app, ["ingest", str(cli_env), "--collection", "clitest", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["added"] == 2
    res = runner.invoke(app, ["search", "who approves expensive train tickets", "--collection", "clitest", "--json", "--k", "1"])
    assert res.exit_code == 0, res.output
    hit = json.loads(res.stdout)["hits"][0]
    assert hit["provenance"]["source"] == "handbook.md" and hit["provenance"]["heading_path"] == ["Handbook", "Travel"]


def test_bad_input_is_a_clear_error(cli_env):
    res = runner.invoke(app, ["search", "x", "--filter", "{not json"])
    assert res.exit_code == 1 and "--filter is not valid JSON" in res.output
    res = runner.invoke(app, ["search", "x", "--collection", "never-made"])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_demo_runs_the_main_job_end_to_end(cli_env):
    """`guardrag demo`: ingest examples/, search, then `ask` through the retrieval, graph and judge servers;
    the example with a planted instruction is quarantined and the answer cites the key-rotation text."""
    res = runner.invoke(app, ["demo"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "ingested" in res.output and "7 added" in res.output
    assert "answer (confidence" in res.output and "offline-extractive" in res.output
    assert "quarantined chunks" in res.output and "vendor-notes.md#" in res.output
    first, second = res.output.split("guardrag ask")[1:]
    assert "keys@vendor-support.example" not in first + second
    # The second question's answer quotes the escalation contact with the phone number and address redacted.
    assert "Priya Raman" in second and "redacted: EMAIL_ADDRESS, PHONE_NUMBER" in second
    assert "555-0142" not in second and "priya.raman@" not in second
