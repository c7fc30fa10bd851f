"""Telemetry of the MCP servers: Prometheus metrics at /metrics over HTTP, OpenTelemetry spans around tool
calls parented on the trace context a client puts in the request's ``_meta``, and no tracing (no exporter,
no socket) when nothing is configured."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import httpx
import pytest
from mcp import Client
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client.parser import text_string_to_metric_families

from core import telemetry
from servers.common import UNKNOWN_TOOL, instrument
from tests.conftest import http_server, server_env

pytestmark = pytest.mark.anyio

RELEVANCE = {"question": "When was Starbucks founded?", "answer": "Starbucks was founded in 1971."}


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a text exposition, keyed by (sample name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _remote_parent() -> tuple[int, int, dict[str, str]]:
    """A made-up caller's span: (trace id, span id, the ``_meta`` that carries it as W3C trace context)."""
    trace_id, span_id = random.getrandbits(128) | 1, random.getrandbits(64) | 1
    return trace_id, span_id, {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01"}


def _attach(trace_id: int, span_id: int) -> object:
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))


# ------------------------------------------------------------------------------------- the kernel alone

def test_metrics_render_in_text_format_with_quantiles():
    telemetry.observe_tool("unit", "t", 0.003, True)
    telemetry.observe_tool("unit", "t", 0.2, False)
    telemetry.observe_step("retrieve", 0.04)
    telemetry.observe_generation("offline", 100, 50, 0.5)
    telemetry.cache_lookup("answer", True)
    samples = _samples(telemetry.render_metrics().decode())
    assert _value(samples, "guardrag_tool_call_seconds_count", server="unit", tool="t", outcome="ok") >= 1
    assert _value(samples, "guardrag_tool_errors_total", server="unit", tool="t", kind="tool") >= 1
    assert _value(samples, "guardrag_step_seconds_count", step="retrieve", outcome="ok") >= 1
    assert _value(samples, "guardrag_llm_tokens_total", backend="offline", kind="completion") >= 50
    assert _value(samples, "guardrag_cache_lookups_total", cache="answer", result="hit") >= 1
    assert telemetry.CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    q = telemetry.latency_quantiles("guardrag_tool_call_seconds", server="unit", tool="t", outcome="ok")
    assert q[0.5] is not None and 0.0025 <= q[0.5] <= 0.005  # interpolated inside the 2.5-5 ms bucket
    assert telemetry.latency_quantiles(server="nobody") == {0.5: None, 0.95: None, 0.99: None}


def test_no_exporter_unless_configured():
    assert telemetry.exporter_from_env({}) is None
    assert telemetry.exporter_from_env({"OTEL_TRACES_EXPORTER": "none",
                                        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) is None
    assert telemetry.exporter_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}) is None
    assert type(telemetry.exporter_from_env({"OTEL_TRACES_EXPORTER": "console"})).__name__ == "ConsoleSpanExporter"
    otlp = telemetry.exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert type(otlp).__name__ == "OTLPSpanExporter"  # an endpoint alone means OTLP (gRPC; connects lazily)
    otlp.shutdown()


def test_a_server_process_installs_no_tracer_without_configuration():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = ("from opentelemetry import trace; from core import telemetry; import servers.common; "
            "print(telemetry.configure_tracing('guardrag-test'), telemetry.tracing_enabled(), "
            "type(trace.get_tracer_provider()).__name__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    assert out == ["False", "False", "ProxyTracerProvider"]


def test_trace_context_round_trips_through_meta():
    assert telemetry.inject_meta({}) == {}  # no span, nothing to carry
    assert telemetry.extract_context({}) is None and telemetry.extract_context({"traceparent": "garbage"}) is None
    trace_id, span_id, meta = _remote_parent()
    token = _attach(trace_id, span_id)
    try:
        carried = telemetry.inject_meta({"progressToken": 1})
    finally:
        otel_context.detach(token)
    assert carried["progressToken"] == 1 and carried["traceparent"] == meta["traceparent"]
    span_context = trace.get_current_span(telemetry.extract_context(carried)).get_span_context()
    assert (span_context.trace_id, span_context.span_id, span_context.is_remote) == (trace_id, span_id, True)


# --------------------------------------------------------------------------------- a server in process

@pytest.fixture(scope="module")
def judge(model_dir):
    from core.embedder import get_embedder
    from core.settings import Settings
    from servers.judge.engine import JudgeEngine
    from servers.judge.server import build_server

    settings = Settings(model_dir=model_dir)
    server = build_server(settings, engine=JudgeEngine(settings, embedder=get_embedder(model_dir), backends=[]))
    return instrument(instrument(server))  # idempotent


async def test_tool_span_is_a_child_of_the_trace_in_meta(judge):
    assert sum(type(m).__name__ == "ToolTelemetry" for m in judge.middleware) == 1
    exporter = telemetry.install_memory_exporter()
    exporter.clear()
    trace_id, span_id, meta = _remote_parent()
    async with Client(judge) as client:
        # The caller's span is current on the client side too, so the SDK's own client span (which
        # rewrites traceparent) stays in the same trace.
        token = _attach(trace_id, span_id)
        try:
            res = await client.call_tool("judge_relevance", RELEVANCE, meta=meta)
            bad = await client.call_tool("judge_relevance", {"question": 5})
        finally:
            otel_context.detach(token)
    assert not res.is_error and bad.is_error
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    ok, failed = [s for s in spans if s.name == "mcp.tool/judge_relevance"]
    assert ok.context.trace_id == trace_id and ok.attributes["mcp.server.name"] == "guardrag-judge"
    assert ok.status.is_ok and not failed.status.is_ok and failed.attributes["error.type"] == "tool_error"
    chain, span = [], ok  # walk up: mcp.tool -> SDK server span -> SDK client span -> the caller's span
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span.name)
    assert chain[0] == "tools/call judge_relevance"
    assert span.parent is not None and (span.parent.trace_id, span.parent.span_id) == (trace_id, span_id)


# ------------------------------------------------------------------------------ a real server over HTTP

async def test_http_server_serves_metrics_and_exports_spans(settings):
    env = server_env(settings) | {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    stderr: list[str] = []
    with http_server("servers.judge.server", env, stderr=stderr) as url:
        base = url.removesuffix("/mcp")
        async with httpx.AsyncClient(base_url=base) as web:
            before = await web.get("/metrics")
            assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain; version=0.0.4")
            b = _samples(before.text)
            trace_id, span_id, meta = _remote_parent()
            async with Client(f"{base}/mcp") as client:
                token = _attach(trace_id, span_id)
                try:
                    res = await client.call_tool("judge_relevance", RELEVANCE, meta=meta)
                finally:
                    otel_context.detach(token)
                bad = await client.call_tool("judge_relevance", {"question": "x"})  # answer missing
                unknown = await client.call_tool("no_such_tool", {})
            assert not res.is_error and bad.is_error and unknown.is_error
            after = await web.get("/metrics")
            a = _samples(after.text)
            rebinding = await web.get("/metrics", headers={"Host": "evil.example"})
            cross_site = await web.get("/metrics", headers={"Origin": "http://evil.example"})
        assert rebinding.status_code == 421 and cross_site.status_code == 403

        def delta(name: str, **labels: str) -> float:
            return _value(a, name, **labels) - _value(b, name, **labels)

        ok = {"server": "guardrag-judge", "tool": "judge_relevance", "outcome": "ok"}
        err = {"server": "guardrag-judge", "tool": "judge_relevance", "outcome": "error"}
        assert delta("guardrag_tool_call_seconds_count", **ok) == 1
        assert delta("guardrag_tool_call_seconds_bucket", le="+Inf", **ok) == 1
        assert delta("guardrag_tool_calls_total", **ok) == 1 and delta("guardrag_tool_calls_total", **err) == 1
        assert delta("guardrag_tool_errors_total", server="guardrag-judge", tool="judge_relevance", kind="tool") == 1
        assert delta("guardrag_tool_errors_total", server="guardrag-judge", tool=UNKNOWN_TOOL, kind="tool") == 1
        assert not any(dict(labels).get("tool") == "no_such_tool" for _, labels in a)  # bounded label set
        assert _value(a, "guardrag_tool_calls_in_flight", server="guardrag-judge", tool="judge_relevance") == 0
        assert _value(a, "process_resident_memory_bytes") > 0
    spans = _console_spans(stderr[0])
    tool_spans = [s for s in spans if s["name"] == "mcp.tool/judge_relevance"]
    assert len(tool_spans) == 2  # the good call and the bad one; the unknown tool has its own name
    assert f"0x{trace_id:032x}" in {s["context"]["trace_id"] for s in tool_spans}
    assert {s["status"]["status_code"] for s in tool_spans} == {"UNSET", "ERROR"}
    assert any(s["name"] == f"mcp.tool/{UNKNOWN_TOOL}" for s in spans)


def _console_spans(text: str) -> list[dict]:
    """The spans ConsoleSpanExporter wrote (pretty-printed JSON objects) among the other stderr lines."""
    decoder, spans, i = json.JSONDecoder(), [], 0
    while (i := text.find('{\n    "name"', i)) >= 0:
        span, end = decoder.raw_decode(text, i)
        spans.append(span)
        i = end
    return spans
