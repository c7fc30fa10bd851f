"""Connect to guardrag's MCP servers the way an IDE does: launch over stdio, or dial a URL.

The client never imports a server's internals; it starts ``python -m
servers.<name>.server`` as a subprocess (or connects to a streamable-HTTP URL)
and speaks MCP to it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from core.errors import GuardragError

SERVERS = ("retrieval", "graph", "judge")
_PASS_ENV_PREFIXES = ("GUARDRAG_", "ORT_", "HF_", "TRANSFORMERS_", "ANONYMIZED_TELEMETRY", "CHROMA_", "DO_NOT_TRACK")


class ToolCallError(GuardragError):
    """A tool answered with an error result."""

    code = "tool_error"


def stdio_params(server: str, env: dict[str, str] | None = None, cwd: str | None = None) -> StdioServerParameters:
    """How to launch one of this install's servers over stdio."""
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}; known: {', '.join(SERVERS)}")
    passed = {k: v for k, v in os.environ.items() if k.startswith(_PASS_ENV_PREFIXES)}
    passed.update(env or {})
    return StdioServerParameters(
        command=sys.executable, args=["-m", f"servers.{server}.server"], env=passed, cwd=cwd or os.getcwd()
    )


@asynccontextmanager
async def connect(server: str, *, url: str | None = None, env: dict[str, str] | None = None,
                  timeout: float = 600) -> AsyncIterator[Client]:
    """An MCP client session to a guardrag server (stdio subprocess unless ``url`` is given)."""
    target: Any = url if url else stdio_params(server, env)
    async with Client(target, read_timeout_seconds=timeout) as client:
        yield client


async def call(client: Client, tool: str, args: dict[str, Any],
               progress: Callable[[float, float | None, str | None], Any] | None = None) -> dict[str, Any]:
    """Call a tool and return its structured result; raise :class:`ToolCallError` on an error result."""
    result = await client.call_tool(tool, args, progress_callback=progress)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    if result.is_error:
        raise ToolCallError(text or f"{tool} failed")
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(text)
