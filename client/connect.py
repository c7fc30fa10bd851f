"""Connect to guardrag's MCP servers the way an IDE does: launch over stdio, or dial a URL.

The client never imports a server's internals; it starts ``python -m
servers.<name>.server`` as a subprocess (or connects to a streamable-HTTP URL)
and speaks MCP to it.

Where each server is comes from a **servers file** in the shape IDEs use: ``{"mcpServers": {NAME:
{"command", "args", "env", "cwd"} | {"url"}}}`` (Claude Desktop, Cursor) or ``{"servers": {...}}``
(VS Code's ``.vscode/mcp.json``). Names are ``retrieval``, ``graph`` and ``judge``, optionally prefixed
``guardrag-``; other entries are ignored. A server the file does not name is launched from this install
over stdio. :func:`install_config` writes the file that describes this install.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import GuardragError

SERVERS = ("retrieval", "graph", "judge")
_PASS_ENV_PREFIXES = ("GUARDRAG_", "ORT_", "HF_", "TRANSFORMERS_", "ANONYMIZED_TELEMETRY", "CHROMA_", "DO_NOT_TRACK")


class ToolCallError(GuardragError):
    """A tool answered with an error result."""

    code = "tool_error"


class ServerSpec(BaseModel):
    """One entry of a servers file: a command to launch over stdio, or the URL of a streamable-HTTP server."""

    model_config = ConfigDict(extra="ignore")  # IDE files carry keys of their own ("type", "disabled", ...)

    command: str | None = Field(None, min_length=1, description="Program to launch (stdio).")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables set for it.")
    cwd: str | None = Field(None, description="Its working directory (default: the current one).")
    url: str | None = Field(None, pattern=r"^https?://", description="Streamable-HTTP endpoint, e.g. "
                            "http://127.0.0.1:8765/mcp.")

    @model_validator(mode="after")
    def _one_transport(self) -> ServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either 'command' (stdio) or 'url' (streamable HTTP)")
        return self


def local_spec(server: str) -> ServerSpec:
    """How to launch one of this install's servers over stdio."""
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}; known: {', '.join(SERVERS)}")
    return ServerSpec(command=sys.executable, args=["-m", f"servers.{server}.server"])


def load_servers_file(path: Path | str) -> dict[str, ServerSpec]:
    """The guardrag servers named in an ``mcpServers`` (or VS Code ``servers``) JSON file, by server name."""
    path = Path(path).expanduser()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GuardragError(f"servers file {path} does not exist", code="not_found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GuardragError(f"servers file {path} is not readable JSON: {exc}", code="invalid_input") from None
    entries = raw.get("mcpServers", raw.get("servers")) if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise GuardragError(f"servers file {path} has no 'mcpServers' (or 'servers') object", code="invalid_input")
    specs: dict[str, ServerSpec] = {}
    for name, entry in entries.items():
        server = name.removeprefix("guardrag-").removeprefix("guardrag_")
        if server not in SERVERS:
            continue
        try:
            specs[server] = ServerSpec.model_validate(entry)
        except ValidationError as exc:
            msg = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors())
            raise GuardragError(f"servers file {path}, entry {name!r}: {msg}", code="invalid_input") from None
    return specs


def install_config(*, vscode: bool = False, servers: tuple[str, ...] = (*SERVERS, "agent"),
                   env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The servers file (``mcpServers``, or VS Code's ``servers``) that launches this install's servers."""
    entries: dict[str, Any] = {}
    for server in servers:
        module = "client.agent_server" if server == "agent" else f"servers.{server}.server"
        entry: dict[str, Any] = {"command": sys.executable, "args": ["-m", module]}
        if vscode:
            entry = {"type": "stdio", **entry}
        if env:
            entry["env"] = dict(env)
        entries[f"guardrag-{server}"] = entry
    return {"servers" if vscode else "mcpServers": entries}


def _target(server: str, spec: ServerSpec | None, env: Mapping[str, str] | None) -> str | StdioServerParameters:
    spec = spec or local_spec(server)
    if spec.url:
        return spec.url
    passed = {k: v for k, v in os.environ.items() if k.startswith(_PASS_ENV_PREFIXES)}
    passed.update(env or {})
    passed.update(spec.env)
    return StdioServerParameters(command=spec.command or sys.executable, args=spec.args, env=passed,
                                 cwd=spec.cwd or os.getcwd())


@asynccontextmanager
async def connect(server: str, *, url: str | None = None, env: dict[str, str] | None = None,
                  spec: ServerSpec | None = None, timeout: float = 600) -> AsyncIterator[Client]:
    """An MCP client session to a guardrag server: ``url`` if given, else ``spec`` (from a servers file), else
    this install's server over stdio. ``env`` is added to a launched server's environment (``spec.env`` wins)."""
    target: Any = url or _target(server, spec, env)
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
