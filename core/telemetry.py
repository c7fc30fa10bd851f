"""Metrics and traces: a Prometheus registry of guardrag's own and OpenTelemetry tracing that stays off
unless someone configures it. No MCP here (the servers' adapter lives in ``servers/common.py``).

Metrics live in a dedicated :class:`prometheus_client.CollectorRegistry` (:data:`REGISTRY`), never the
process-global one, so a library that registers its own collectors cannot leak into ``/metrics``:

- ``guardrag_tool_call_seconds`` histogram {server, tool, outcome=ok|error}: p50/p95/p99 with
  ``histogram_quantile(0.95, sum by (le, tool) (rate(guardrag_tool_call_seconds_bucket[5m])))``;
- ``guardrag_tool_calls_total`` {server, tool, outcome} and ``guardrag_tool_errors_total`` {server, tool,
  kind=tool|protocol|cancelled}: the error rate is ``rate(errors_total) / rate(calls_total)``;
- ``guardrag_tool_calls_in_flight`` gauge {server, tool};
- for the pipeline (the client records them): ``guardrag_step_seconds`` {step, outcome},
  ``guardrag_llm_tokens_total`` {backend, kind=prompt|completion}, ``guardrag_llm_generation_seconds_total``
  and ``guardrag_llm_tokens_per_second`` {backend}, ``guardrag_cache_lookups_total`` {cache, result=hit|miss}
  (hit rate = hits / lookups);
- the process collector (CPU, memory, open files) of this process.

Tracing: :func:`configure_tracing` installs an SDK tracer provider only when an exporter is configured,
explicitly or by the standard environment (``OTEL_TRACES_EXPORTER=otlp|console``,
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); otherwise the OpenTelemetry API
stays a no-op and nothing opens a socket. Note: unlike the OpenTelemetry default, an unset
``OTEL_TRACES_EXPORTER`` with no endpoint means *no* exporter (a guard product never phones home).
Trace context crosses MCP in the request's ``_meta`` as W3C ``traceparent`` / ``tracestate``
(:func:`inject_meta`, :func:`extract_context`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

__all__ = [
    "CONTENT_TYPE", "LATENCY_BUCKETS", "REGISTRY", "cache_lookup", "configure_tracing", "exporter_from_env",
    "extract_context", "in_flight", "inject_meta", "install_memory_exporter", "latency_quantiles",
    "observe_generation", "observe_step", "observe_tool", "render_metrics", "tracer", "tracing_enabled",
]

log = logging.getLogger("guardrag.telemetry")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""Content type of :func:`render_metrics` (Prometheus text exposition format 0.0.4)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
"""Histogram buckets in seconds: 1 ms to 60 s (slower calls land in +Inf)."""

REGISTRY = CollectorRegistry(auto_describe=True)
"""guardrag's own registry (not ``prometheus_client.REGISTRY``)."""

ProcessCollector(registry=REGISTRY)

TOOL_SECONDS = Histogram("guardrag_tool_call_seconds", "MCP tool call latency, from request to result.",
                         ["server", "tool", "outcome"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
TOOL_CALLS = Counter("guardrag_tool_calls", "MCP tool calls handled.", ["server", "tool", "outcome"],
                     registry=REGISTRY)
TOOL_ERRORS = Counter("guardrag_tool_errors", "MCP tool calls that failed: kind=tool (an error result) or "
                      "protocol (a JSON-RPC error, e.g. invalid params) or cancelled.", ["server", "tool", "kind"],
                      registry=REGISTRY)
TOOL_IN_FLIGHT = Gauge("guardrag_tool_calls_in_flight", "MCP tool calls being handled now.", ["server", "tool"],
                       registry=REGISTRY)
STEP_SECONDS = Histogram("guardrag_step_seconds", "Pipeline step latency.", ["step", "outcome"],
                         buckets=LATENCY_BUCKETS, registry=REGISTRY)
LLM_TOKENS = Counter("guardrag_llm_tokens", "Tokens used by model backends.", ["backend", "kind"],
                     registry=REGISTRY)
LLM_SECONDS = Counter("guardrag_llm_generation_seconds", "Time spent generating, per backend.", ["backend"],
                      registry=REGISTRY)
LLM_TPS = Histogram("guardrag_llm_tokens_per_second", "Completion tokens per second of each generation.",
                    ["backend"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
                    registry=REGISTRY)
CACHE_LOOKUPS = Counter("guardrag_cache_lookups", "Cache lookups by result (hit rate = hit / all).",
                        ["cache", "result"], registry=REGISTRY)


# ---------------------------------------------------------------------------------------------- metrics

def observe_tool(server: str, tool: str, seconds: float, ok: bool, *, error_kind: str = "tool") -> None:
    """Record one tool call: its latency and outcome (``error_kind`` = tool | protocol | cancelled when not ``ok``)."""
    outcome = "ok" if ok else "error"
    TOOL_SECONDS.labels(server, tool, outcome).observe(max(seconds, 0.0))
    TOOL_CALLS.labels(server, tool, outcome).inc()
    if not ok:
        TOOL_ERRORS.labels(server, tool, error_kind).inc()


@contextmanager
def in_flight(server: str, tool: str) -> Iterator[None]:
    """Count a tool call as in flight for the duration of the block."""
    gauge = TOOL_IN_FLIGHT.labels(server, tool)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def observe_step(step: str, seconds: float, ok: bool = True) -> None:
    """Record one pipeline step (retrieve, graph, critique, compress, answer, guard, judge, ...)."""
    STEP_SECONDS.labels(step, "ok" if ok else "error").observe(max(seconds, 0.0))


def observe_generation(backend: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
    """Record one model generation: token counts and, when it took time, its completion tokens per second."""
    LLM_TOKENS.labels(backend, "prompt").inc(max(prompt_tokens, 0))
    LLM_TOKENS.labels(backend, "completion").inc(max(completion_tokens, 0))
    if seconds > 0:
        LLM_SECONDS.labels(backend).inc(seconds)
        if completion_tokens > 0:
            LLM_TPS.labels(backend).observe(completion_tokens / seconds)


def cache_lookup(cache: str, hit: bool) -> None:
    """Record one cache lookup (``cache`` names the cache, e.g. 'answer')."""
    CACHE_LOOKUPS.labels(cache, "hit" if hit else "miss").inc()


def render_metrics() -> bytes:
    """The registry in the Prometheus text exposition format (serve it with :data:`CONTENT_TYPE`)."""
    return generate_latest(REGISTRY)


def latency_quantiles(histogram: str = "guardrag_tool_call_seconds", quantiles: tuple[float, ...] = (0.5, 0.95, 0.99),
                      **labels: str) -> dict[float, float | None]:
    """Estimate quantiles of a histogram of this registry, summed over the series that match ``labels``
    (linear interpolation within a bucket, as PromQL's ``histogram_quantile``). ``None`` when nothing
    was observed; a quantile in the +Inf bucket reports the largest finite bound."""
    buckets: dict[float, float] = {}
    for metric in REGISTRY.collect():
        if metric.name != histogram:
            continue
        for sample in metric.samples:
            if sample.name != histogram + "_bucket":
                continue
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            bound = float(sample.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return dict.fromkeys(quantiles)
    bounds = sorted(buckets)
    out: dict[float, float | None] = {}
    for q in quantiles:
        rank = q * total
        lower, below = 0.0, 0.0
        for bound in bounds:
            count = buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    out[q] = lower
                else:
                    width = count - below
                    out[q] = bound if width <= 0 else lower + (bound - lower) * (rank - below) / width
                break
            lower, below = bound, count
    return out


# ---------------------------------------------------------------------------------------------- tracing

_lock = threading.Lock()
_provider: Any = None  # the SDK TracerProvider we installed, if any
_memory_exporter: InMemorySpanExporter | None = None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def exporter_from_env(env: Mapping[str, str] | None = None, *, exporter: str | None = None,
                      endpoint: str | None = None) -> SpanExporter | None:
    """The span exporter the configuration asks for, or ``None`` (the default: no tracing, no network).

    ``exporter`` / ``endpoint`` (e.g. from settings) take precedence over ``OTEL_TRACES_EXPORTER`` and
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``. ``otlp`` exports over gRPC
    (``opentelemetry-exporter-otlp-proto-grpc``; ``http/protobuf`` when ``OTEL_EXPORTER_OTLP_*PROTOCOL``
    says so and the HTTP exporter is installed); ``console`` writes spans to stderr (never stdout, which
    is the stdio MCP channel); ``none`` or ``OTEL_SDK_DISABLED=true`` disables tracing."""
    env = os.environ if env is None else env
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return None
    endpoint = endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    names = exporter or env.get("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")
    chosen = [n.strip().lower() for n in names.split(",") if n.strip()]
    chosen = [n for n in chosen if n != "none"]
    if not chosen:
        return None
    if len(chosen) > 1:
        log.warning("OTEL_TRACES_EXPORTER=%s: only the first exporter (%s) is used", names, chosen[0])
    name = chosen[0]
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)
    if name == "otlp":
        protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "grpc").strip().lower()
        try:
            if protocol.startswith("http"):
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,  # type: ignore[assignment]
                )
        except ImportError:
            log.warning("OTLP %s span exporter is not installed; tracing stays off", protocol)
            return None
        return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    log.warning("unknown trace exporter %r (supported: otlp, console, none); tracing stays off", name)
    return None


def _ensure_provider(service_name: str) -> Any:
    """Our SDK tracer provider, installed as the global one on first use. Call with ``_lock`` held."""
    global _provider
    if _provider is None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):  # somebody (e.g. opentelemetry-instrument) installed one
            _provider = current
        else:
            attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
            _provider = TracerProvider(resource=Resource.create(attributes))
            trace.set_tracer_provider(_provider)
    return _provider


def configure_tracing(service_name: str = "guardrag", *, env: Mapping[str, str] | None = None,
                      exporter: str | None = None, endpoint: str | None = None) -> bool:
    """Install a tracer provider exporting spans in batches, if an exporter is configured (see
    :func:`exporter_from_env`). Returns whether tracing is on. Idempotent: a second call adds nothing."""
    with _lock:
        if _provider is not None and getattr(_provider, "_guardrag_exporting", False):
            return True
        span_exporter = exporter_from_env(env, exporter=exporter, endpoint=endpoint)
        if span_exporter is None:
            return _provider is not None
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = _ensure_provider(service_name)
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
        provider._guardrag_exporting = True
        log.info("OpenTelemetry tracing on: %s", type(span_exporter).__name__)
        return True


def install_memory_exporter() -> InMemorySpanExporter:
    """For tests: an in-memory exporter on our tracer provider (installed if needed), spans exported
    synchronously. The same exporter on every call; ``clear()`` it between tests."""
    global _memory_exporter
    with _lock:
        if _memory_exporter is None:
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )

            _memory_exporter = InMemorySpanExporter()
            _ensure_provider("guardrag-test").add_span_processor(SimpleSpanProcessor(_memory_exporter))
        return _memory_exporter


def tracing_enabled() -> bool:
    """Whether spans go anywhere: a provider of ours (or another SDK provider) is installed."""
    from opentelemetry.sdk.trace import TracerProvider

    return _provider is not None or isinstance(trace.get_tracer_provider(), TracerProvider)


def tracer(name: str = "guardrag") -> trace.Tracer:
    """A tracer: a no-op one until :func:`configure_tracing` (or a test exporter) installs a provider;
    a tracer taken earlier starts recording once it does (it proxies the global provider)."""
    return trace.get_tracer(name)


def inject_meta(meta: dict[str, Any] | None = None, context: Context | None = None) -> dict[str, Any]:
    """Put the current (or ``context``'s) trace context into an MCP request ``_meta`` dict as W3C
    ``traceparent`` / ``tracestate``; returns the dict (a new one when ``meta`` is None). Nothing is
    added when there is no valid span (e.g. tracing is off)."""
    meta = {} if meta is None else meta
    propagate.inject(meta, context=context)
    return meta


def extract_context(meta: Mapping[str, Any] | None) -> Context | None:
    """The trace context carried by an MCP request ``_meta``, or ``None`` when it carries no valid
    ``traceparent`` (so a span started with ``context=None`` nests under the current span instead)."""
    if not meta:
        return None
    try:
        ctx = propagate.extract(meta)
    except (TypeError, ValueError):
        return None
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None
