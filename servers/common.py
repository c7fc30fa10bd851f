"""What every guardrag MCP server shares: tool annotations, common argument types, running an engine call
off the event loop with errors mapped to MCP errors, and the stdio / streamable-HTTP entry point."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from core.errors import GuardragError
from core.settings import Settings, get_settings

__all__ = ["DELETE", "READ_ONLY", "WRITE", "Collection", "Cursor", "call_engine", "read_resource", "serve_main", "tool_result"]

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


def serve_main(build_server: Callable[[Settings], MCPServer], *, prog: str, description: str, port: int,
               argv: list[str] | None = None) -> None:
    """Entry point of a server module: ``python -m servers.X.server [--http] [--host H] [--port N]``.
    Serves stdio by default, streamable HTTP on loopback with ``--http``; logs go to stderr."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper())
    server = build_server(settings)
    if args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run("stdio")
