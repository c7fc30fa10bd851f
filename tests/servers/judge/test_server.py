"""The judge MCP server through the official MCP Python client: in process, over stdio and over HTTP."""

from __future__ import annotations

import sys

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from servers.judge.engine import JudgeEngine
from servers.judge.server import build_server
from tests.conftest import http_server, server_env

pytestmark = pytest.mark.anyio

TOOLS = {"judge_faithfulness", "judge_relevance", "critique_context", "judge_safety", "judge_all"}
CONTEXTS = ["Starbucks was founded in Seattle, Washington in 1971.", "Its logo is a twin-tailed siren."]


@pytest.fixture(scope="module")
def server(model_dir):
    from core.embedder import get_embedder
    from core.settings import Settings

    settings = Settings(model_dir=model_dir)
    return build_server(settings, engine=JudgeEngine(settings, embedder=get_embedder(model_dir), backends=[]))


async def test_tools_are_typed_read_only_and_documented(server):
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 80
            assert tool.output_schema and tool.output_schema["type"] == "object" and "run" not in tool.input_schema
            assert tool.annotations.read_only_hint is True and tool.annotations.open_world_hint is False
        assert tools["judge_faithfulness"].input_schema["required"] == ["answer", "contexts"]
        assert tools["judge_faithfulness"].input_schema["properties"]["contexts"]["maxItems"] == 50
        assert set(tools["judge_faithfulness"].output_schema["required"]) >= {"score", "verdict", "claims", "run"}


async def test_judge_faithfulness_structured_and_readable(server):
    async with Client(server) as client:
        res = await client.call_tool("judge_faithfulness", {
            "answer": "Starbucks was founded in Seattle in 1971. It was founded in Portland in 1985.",
            "contexts": CONTEXTS})
        assert not res.is_error
        data = res.structured_content
        assert data["verdict"] == "unfaithful" and data["score"] == 0.5
        assert [c["status"] for c in data["claims"]][0] == "supported"
        assert data["run"]["backend"] == "offline-evidence" and data["run"]["rubric"].startswith("faithfulness@")
        text = res.content[0].text
        assert text.startswith("faithfulness 0.50 -> unfaithful") and "SUPPORTED [context 0]" in text
        assert "1985" in text  # the cue says which number is not in the contexts


async def test_other_tools(server):
    async with Client(server) as client:
        crit = await client.call_tool("critique_context", {"question": "When was Starbucks founded?",
                                                           "contexts": CONTEXTS})
        assert crit.structured_content["contexts"][0]["verdict"] == "relevant"
        safety = await client.call_tool("judge_safety", {"text": "Call me at 212-555-0199 or mail a@b.example"})
        assert safety.structured_content["safe"] is False and "UNSAFE" in safety.content[0].text
        both = await client.call_tool("judge_all", {"question": "When was Starbucks founded?",
                                                    "answer": "It was founded in 1971.", "contexts": CONTEXTS})
        assert both.structured_content["passed"] is True and both.content[0].text.startswith("overall: PASS")


@pytest.mark.parametrize("tool, args, needle", [
    ("judge_faithfulness", {"answer": 5, "contexts": []}, "validation error"),
    ("judge_faithfulness", {"answer": "x"}, "contexts"),
    ("judge_faithfulness", {"answer": "x", "contexts": ["c"] * 51}, "50"),
    ("judge_safety", {"text": "x" * 100_001}, "100000"),
])
async def test_bad_input_is_a_tool_error(server, tool, args, needle):
    async with Client(server) as client:
        res = await client.call_tool(tool, args)
        assert res.is_error and needle in res.content[0].text


async def test_stdio_subprocess(settings):
    params = StdioServerParameters(command=sys.executable, args=["-m", "servers.judge.server"],
                                   env=server_env(settings))
    async with Client(params) as client:
        res = await client.call_tool("judge_faithfulness", {"answer": "It was founded in 1971.", "contexts": CONTEXTS})
        assert not res.is_error and res.structured_content["verdict"] == "faithful"


async def test_streamable_http_subprocess(settings):
    with http_server("servers.judge.server", server_env(settings)) as url:
        async with Client(url) as client:
            res = await client.call_tool("judge_relevance", {"question": "When was Starbucks founded?",
                                                             "answer": "Starbucks was founded in 1971."})
            assert not res.is_error and res.structured_content["verdict"] == "relevant"
            bad = await client.call_tool("judge_relevance", {"question": "x"})
            assert bad.is_error
