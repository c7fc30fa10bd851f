"""What every guardrag MCP server shares: tool annotations, common argument types, running an engine call
off the event loop with errors mapped to MCP errors, telemetry of every tool call, and the stdio /
streamable-HTTP entry point.

Telemetry: :func:`instrument` (done by :func:`serve_main` for every server) records each ``tools/call`` in
:data:`core.telemetry.REGISTRY` (latency histogram, calls and errors by outcome, in-flight gauge) and opens an
OpenTelemetry span ``mcp.tool/<name>``. The span nests under the SDK's own ``tools/call <name>`` server span,
which takes its parent from the W3C ``traceparent`` / ``tracestate`` in the request's ``_meta``. Spans go
nowhere unless an exporter is configured (``OTEL_TRACES_EXPORTER`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, see
:func:`core.telemetry.configure_tracing`). With ``--http`` the Prometheus text format is served at
``GET /metrics`` next to ``/mcp`` (same Host/Origin checks as ``/mcp`` on loopback); over stdio there is no
``/metrics`` endpoint (metrics live in the server process only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import (
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from core import telemetry
from core.errors import GuardragError
from core.settings import Settings, get_settings

__all__ = ["DELETE", "READ_ONLY", "WRITE", "Collection", "Cursor", "ToolTelemetry", "add_metrics_route", "call_engine",
           "instrument", "read_resource", "serve_main", "serve_stdio", "tool_result"]

log = logging.getLogger("guardrag.servers")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
UNKNOWN_TOOL = "(unknown)"
"""The tool label of a call to a name the server does not have (keeps the label set bounded)."""

T = TypeVar("T")

READ_ONLY = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)
WRITE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False)
DELETE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False)

Collection = Annotated[
    str | None, Field(description="Collection name; omit for the default collection.", max_length=512)
]
Cursor = Annotated[str | None, Field(description="next_cursor from a previous page; omit for the first page.")]


async def call_engine(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking engine call in a worker thread; a GuardragError becomes an MCP tool error."""
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    except GuardragError as exc:
        raise ToolError(f"{exc.code}: {exc.message}") from None


async def read_resource(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Like :func:`call_engine` for a resource read: a GuardragError becomes 'resource not found'."""
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    except GuardragError as exc:
        raise ResourceNotFoundError(exc.message) from None


def tool_result(result: BaseModel, text: str) -> CallToolResult:
    """A tool result with both parts: ``text`` for a model to read, the structured result for a program."""
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=result.model_dump(mode="json"))


class ToolTelemetry:
    """Server middleware (``ServerMiddleware``) that times every ``tools/call``: records it in
    :data:`core.telemetry.REGISTRY` and wraps it in an OpenTelemetry span ``mcp.tool/<name>``.

    An outcome is ``error`` when the call returns an error result (``isError``: bad arguments, an unknown
    tool, an engine that rejected the input: kind ``tool``), raises (a JSON-RPC error such as malformed
    params: kind ``protocol``) or is cancelled (kind ``cancelled``). A name the server has no tool for is
    labelled ``(unknown)``. Other methods pass through untouched."""

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self.server_name = server.name
        self._tools: frozenset[str] = frozenset()

    async def _label(self, name: Any) -> str:
        if not isinstance(name, str):
            return UNKNOWN_TOOL
        if name not in self._tools:  # tools may be added after instrumenting: look again
            self._tools = frozenset(t.name for t in await self.server.list_tools())
        return name if name in self._tools else UNKNOWN_TOOL

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        tool = await self._label(ctx.params.get("name") if ctx.params else None)
        # The SDK's OpenTelemetry middleware (outermost) already made the _meta trace context current;
        # extract it ourselves only when that span is missing (middleware removed).
        parent = None if trace.get_current_span().get_span_context().is_valid else telemetry.extract_context(ctx.meta)
        attributes = {"mcp.server.name": self.server_name, "gen_ai.tool.name": tool,
                      "gen_ai.operation.name": "execute_tool"}
        start = time.perf_counter()
        with telemetry.in_flight(self.server_name, tool), \
                telemetry.tracer("guardrag.servers").start_as_current_span(
                    f"mcp.tool/{tool}", kind=SpanKind.INTERNAL, context=parent, attributes=attributes,
                    record_exception=False, set_status_on_exception=False) as span:
            try:
                result = await call_next(ctx)
            except BaseException as exc:
                failed = isinstance(exc, Exception)  # else a cancellation
                telemetry.observe_tool(self.server_name, tool, time.perf_counter() - start, False,
                                       error_kind="protocol" if failed else "cancelled")
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(StatusCode.ERROR, type(exc).__qualname__)
                raise
            match result:
                case CallToolResult(is_error=True) | {"isError": True}:
                    ok = False
                    span.set_attribute("error.type", "tool_error")
                    span.set_status(StatusCode.ERROR)
                case _:
                    ok = True
            telemetry.observe_tool(self.server_name, tool, time.perf_counter() - start, ok)
            return result


def instrument(server: MCPServer) -> MCPServer:
    """Record every tool call of ``server`` (metrics and spans); idempotent. Returns the server."""
    if not any(isinstance(m, ToolTelemetry) for m in server.middleware):
        server.middleware.append(ToolTelemetry(server))
    return server


def _loopback_security() -> TransportSecuritySettings:
    """The DNS-rebinding protection the SDK applies to ``/mcp`` when bound to loopback."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


def add_metrics_route(server: MCPServer, host: str = "127.0.0.1", path: str = "/metrics") -> None:
    """Serve :func:`core.telemetry.render_metrics` at ``GET path`` of the server's HTTP app. On a loopback
    host the Host and Origin headers are checked as the SDK checks them for ``/mcp`` (a web page cannot
    read the metrics through DNS rebinding)."""
    security = TransportSecurityMiddleware(_loopback_security() if host in LOOPBACK else None)

    async def metrics(request: Request) -> Response:
        refused = await security.validate_request(request)
        if refused is not None:
            return refused
        body = await anyio.to_thread.run_sync(telemetry.render_metrics)
        return Response(body, media_type=telemetry.CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    server.custom_route(path, methods=["GET"], name="metrics", include_in_schema=False)(metrics)


def serve_main(build_server: Callable[[Settings], MCPServer], *, prog: str, description: str, port: int,
               argv: list[str] | None = None) -> None:
    """Entry point of a server module: ``python -m servers.X.server [--http] [--host H] [--port N]``.
    Serves stdio by default, streamable HTTP on loopback with ``--http`` (MCP at ``/mcp``, Prometheus
    metrics at ``/metrics``); logs go to stderr; spans are exported only when OpenTelemetry is configured."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper())
    server = instrument(build_server(settings))
    telemetry.configure_tracing(server.name)
    if args.http:
        add_metrics_route(server, args.host)
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        anyio.run(serve_stdio, server)


async def serve_stdio(server: MCPServer) -> None:
    """Serve MCP over this process's stdin and stdout.

    The SDK's stdio transport reads each line and writes each message through a worker thread (a file wrapped
    by anyio); when stdin and stdout are pipes, as under an IDE or a client library, this reads and writes them
    on the event loop instead (asyncio pipe transports, with flow control), about 0.7 ms less per request on a
    2-core machine. As the SDK does, fd 0 then reads the null device and fd 1 goes to stderr while serving, so
    stray output of a library cannot corrupt the protocol; both are restored on exit. Anything else (a file, a
    terminal, an SDK without the low-level server this needs) is served by the SDK's transport."""
    lowlevel = getattr(server, "_lowlevel_server", None)
    if lowlevel is None or sys.platform == "win32" or not (_is_pipe(0) and _is_pipe(1)):
        log.debug("stdio: the SDK's transport")
        await server.run_stdio_async()
        return
    log.debug("stdio: asyncio pipes")
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    writer: asyncio.StreamWriter | None = None
    try:
        reader = asyncio.StreamReader(limit=_MAX_LINE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", 0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", 0))
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        async with stdio_server(_PipeLines(reader), _PipeWriter(writer)) as (read, write):  # type: ignore[arg-type]
            await lowlevel.run(read, write, lowlevel.create_initialization_options())
    finally:
        if writer is not None:
            writer.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
        for fd in (0, 1):  # asyncio made the pipes non-blocking; a wrapper that shares them may read on after us
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)


_MAX_LINE = 64 * 1024 * 1024
"""Longest JSON-RPC line read from stdin (asyncio's default limit, 64 KiB, is too small for a large ingest)."""


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _PipeLines:
    """Lines of an asyncio stream as text: what the SDK's ``stdio_server`` iterates over."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __aiter__(self) -> _PipeLines:
        return self

    async def __anext__(self) -> str:
        try:
            line = await self._reader.readline()
        except ValueError:  # longer than _MAX_LINE: asyncio drops it (to its newline); the rest is read on
            log.warning("stdio: a message longer than %d bytes was dropped", _MAX_LINE)
            return "(a message too long to read)\n"  # not JSON: the SDK handles it as any malformed line
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _PipeWriter:
    """Text writes to an asyncio stream: what the SDK's ``stdio_server`` writes and flushes."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()
