"""The stdio transport of every guardrag server (``servers.common.serve_stdio``): asyncio pipes when stdin and
stdout are pipes, the SDK's transport otherwise; stray output of a tool never reaches the protocol stream."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.anyio

SERVER = textwrap.dedent("""
    import logging, os, sys
    import anyio
    from mcp.server.mcpserver import MCPServer
    from servers.common import serve_stdio

    mcp = MCPServer("stdio-test")

    @mcp.tool()
    def noisy(text: str) -> str:
        \"\"\"Echo text after printing to stdout the way a careless library would.\"\"\"
        print("library chatter on stdout", flush=True)
        os.write(1, b"raw bytes on fd 1\\n")
        return text.upper()

    @mcp.tool()
    def big(n: int) -> str:
        \"\"\"A long result.\"\"\"
        return "x" * n

    import servers.common
    servers.common._MAX_LINE = int(os.environ.get("MAX_LINE", servers.common._MAX_LINE))
    logging.getLogger("guardrag").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("guardrag").setLevel(logging.DEBUG)
    anyio.run(serve_stdio, mcp)
""")


@pytest.fixture()
def server_file(tmp_path: Path) -> Path:
    path = tmp_path / "stdio_server.py"
    path.write_text(SERVER)
    return path


async def test_pipes_serve_requests_and_keep_stray_output_off_the_wire(server_file: Path, tmp_path: Path) -> None:
    errlog = tmp_path / "stderr.txt"
    params = StdioServerParameters(command=sys.executable, args=[str(server_file)], cwd=str(ROOT),
                                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    with errlog.open("w") as err:
        async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            for word in ("alpha", "beta"):  # printing did not break the stream: the next call still works
                res = await session.call_tool("noisy", {"text": word})
                assert not res.is_error and res.content[0].text == word.upper()
            long = await session.call_tool("big", {"n": 300_000})  # more than a pipe buffer: flow control
            assert len(long.content[0].text) == 300_000
            bad = await session.call_tool("noisy", {})
            assert bad.is_error  # validation still applies
    chatter = errlog.read_text()
    assert "stdio: asyncio pipes" in chatter
    assert chatter.count("library chatter on stdout") == 2 and chatter.count("raw bytes on fd 1") == 2


def test_the_pipes_are_blocking_again_for_a_wrapper_that_reads_on(server_file: Path) -> None:
    """A shell that starts the server and reads stdin after it exits shares the pipe: it must not see EAGAIN."""
    script = (f"{sys.executable} {server_file} && "
              f"{sys.executable} -c 'import os,sys; print(\"after:\", os.get_blocking(0), os.get_blocking(1), "
              f"sys.stdin.read().strip())'")
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    proc.stdin.write((json.dumps(init) + "\n").encode())
    proc.stdin.flush()
    first = json.loads(proc.stdout.readline())
    assert first["id"] == 1 and "result" in first
    proc.stdin.close()  # EOF: the server exits, then the wrapper's next command reads the same pipes
    proc.stdin = None
    out, err = proc.communicate(timeout=60)
    assert b"stdio: asyncio pipes" in err
    assert out.decode().strip().splitlines()[-1] == "after: True True"


def test_a_message_over_the_line_limit_is_dropped_and_serving_goes_on(server_file: Path) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    huge = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "noisy", "arguments": {"text": "x" * 5000}}}
    small = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "noisy", "arguments": {"text": "ok"}}}
    lines = [init, {"jsonrpc": "2.0", "method": "notifications/initialized"}, huge, small]
    proc = subprocess.Popen([sys.executable, str(server_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MAX_LINE": "2000"})
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in lines).encode())
    proc.stdin.flush()
    replies = {}
    while 3 not in replies:
        msg = json.loads(proc.stdout.readline())
        replies[msg.get("id")] = msg
    proc.stdin.close()
    proc.stdin = None
    _, err = proc.communicate(timeout=60)
    assert replies[3]["result"]["content"][0]["text"] == "OK"
    assert 2 not in replies  # dropped, not half-read
    assert b"longer than 2000 bytes was dropped" in err


def test_a_file_on_stdin_is_served_by_the_sdk_transport(server_file: Path, tmp_path: Path) -> None:
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
    ]  # (a tools/call would race the end of the file: the SDK stops serving at EOF)
    stdin = tmp_path / "stdin.jsonl"
    stdin.write_text("".join(json.dumps(r) + "\n" for r in requests))
    with stdin.open("rb") as fin:
        proc = subprocess.run([sys.executable, str(server_file)], stdin=fin, capture_output=True, cwd=ROOT,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    replies = {m["id"]: m for m in map(json.loads, proc.stdout.decode().splitlines()) if "id" in m}
    assert replies[1]["result"]["serverInfo"]["name"] == "stdio-test" and proc.returncode == 0
    assert b"stdio: the SDK's transport" in proc.stderr
