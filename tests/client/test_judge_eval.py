"""guardrag judge eval: metrics, input validation, and the CLI end to end over MCP (stdio judge server)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from client.cli import app
from client.judge_eval import (
    build_report,
    calibration_bins,
    confusion,
    load_records,
    render_html,
)
from core.errors import InvalidInput
from tests.conftest import server_env

RECORDS = [
    {"id": "r1", "source": "s1", "context": "Starbucks was founded in Seattle in 1971.", "question": "When?",
     "answer": "1971", "label": "faithful", "hallucinated": 0},
    {"id": "r2", "source": "s1", "context": "Starbucks was founded in Seattle in 1971.", "question": "When?",
     "answer": "Starbucks was founded in Portland in 1985.", "label": "hallucinated", "hallucinated": 1},
    {"id": "r3", "source": "s2", "context": "The Nile flows north into the Mediterranean Sea.",
     "answer": "The Nile flows into the Mediterranean Sea.", "label": "faithful"},
    {"id": "r4", "source": "s2", "context": "The Nile flows north into the Mediterranean Sea.",
     "answer": "The Nile flows south into the Red Sea near Cairo.", "label": "hallucinated"},
]


def test_metrics_and_calibration():
    c = confusion([1, 1, 0, 0, 0], [1, 0, 0, 0, 1])
    assert (c.tp, c.fn, c.tn, c.fp) == (1, 1, 2, 1)
    assert c.accuracy == 0.6 and c.balanced_accuracy == pytest.approx((0.5 + 2 / 3) / 2)
    assert confusion([], []).balanced_accuracy is None
    bins = calibration_bins([0.0, 0.1, 0.5, 1.0, 1.0], [0, 0, 1, 1, 0], bins=5)
    assert [b.count for b in bins] == [2, 0, 1, 0, 2] and bins[4].faithful_share == 0.5 and bins[1].mean_score is None


def test_load_records_validates_every_line(tmp_path):
    good = tmp_path / "ok.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    recs = load_records(good)
    assert [r.hallucinated for r in recs] == [0, 1, 0, 1] and recs[2].contexts == [RECORDS[2]["context"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"answer": "x", "context": "y", "label": "maybe"}))
    with pytest.raises(InvalidInput, match="bad.jsonl, line 2"):
        load_records(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInput, match="no records"):
        load_records(tmp_path / "empty.jsonl")


def test_html_report_has_the_numbers_and_a_reliability_plot():
    rows = [{"id": f"r{i}", "source": "s", "label": i % 2, "predicted": i % 2, "score": 0.1 if i % 2 else 0.9,
             "verdict": "unfaithful" if i % 2 else "faithful", "backend": "offline-evidence", "rubric": "f@1+ab"}
            for i in range(6)]
    report = build_report("x.jsonl", rows, [10.0, 20.0])
    assert report.overall.balanced_accuracy == 1.0 and report.latency_p95_ms == 20.0
    page = render_html(report)
    assert "<svg" in page and "<circle" in page and "1.000" in page and "<script" not in page


def test_cli_end_to_end_over_mcp(tmp_path, settings, monkeypatch):
    for k, v in server_env(settings).items():
        monkeypatch.setenv(k, v)
    data = tmp_path / "set.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    html_out, json_out = tmp_path / "r.html", tmp_path / "r.json"
    result = CliRunner().invoke(app, ["judge", "eval", str(data), "--html", str(html_out), "--json", str(json_out)])
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    assert report["n"] == 4 and report["backends"] == {"offline-evidence": 4}
    assert report["overall"]["balanced_accuracy"] == 1.0 and {m["source"] for m in report["by_source"]} == {"s1", "s2"}
    assert "balanced acc." in result.output and "<svg" in html_out.read_text()


def test_cli_bad_file_is_one_error_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    result = CliRunner().invoke(app, ["judge", "eval", str(bad)])
    assert result.exit_code == 2 and "line 1" in result.output
