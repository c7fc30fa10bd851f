"""The retrieval MCP server through the official MCP Python client: in process, over stdio and over HTTP."""

from __future__ import annotations

import json
import sys

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from servers.retrieval.server import build_server
from tests.conftest import http_server, server_env
from tests.servers.retrieval.helpers import corpus_items, snapshot

pytestmark = pytest.mark.anyio

TOOLS = {"ingest_text", "ingest_path", "search", "get_chunk", "get_document", "delete_document",
         "list_documents", "list_collections", "stats"}


@pytest.fixture
def server(settings, engine):
    engine.ingest_texts("kbase", corpus_items())
    return build_server(settings, engine=engine)


async def test_tools_are_typed_and_documented(server):
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 40
            assert tool.output_schema and tool.output_schema["type"] == "object"
            assert tool.input_schema["type"] == "object"
        assert tools["search"].input_schema["required"] == ["query"]
        assert tools["search"].annotations.read_only_hint is True
        assert tools["delete_document"].annotations.destructive_hint is True
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert templates == {"guardrag://retrieval/{collection}/documents/{doc_id}",
                             "guardrag://retrieval/{collection}/chunks/{chunk_id}"}


async def test_search_and_read_through_mcp(server):
    async with Client(server) as client:
        res = await client.call_tool("search", {"query": "ZX-9931", "k": 2, "collection": "kbase"})
        assert not res.is_error
        hit = res.structured_content["hits"][0]
        assert hit["provenance"]["doc_id"] == "kb-004" and hit["bm25"]["rank"] == 1
        assert hit["guard"]["status"] == "clean" and hit["guard"]["details"]["scanner"].startswith("injection")
        text = res.content[0].text  # the readable part, for a model: every hit with its place and chunk id
        assert text.startswith("2 hits for 'ZX-9931'") and f"[1] kb/kb-004 (chunk_id={hit['chunk_id']}" in text
        assert hit["text"] in text
        chunk = await client.call_tool("get_chunk", {"chunk_id": hit["chunk_id"], "collection": "kbase"})
        assert chunk.structured_content["text"] == hit["text"]
        doc = await client.read_resource("guardrag://retrieval/kbase/documents/kb-004")
        assert json.loads(doc.contents[0].text)["doc_id"] == "kb-004"
        page = await client.call_tool("list_documents", {"collection": "kbase", "limit": 3})
        assert page.structured_content["total"] == 10 and page.structured_content["next_cursor"]


@pytest.mark.parametrize("tool, args, needle", [
    ("search", {"query": "", "collection": "kbase"}, "query is empty"),
    ("search", {"query": "x", "k": 0, "collection": "kbase"}, "k must be between"),
    ("search", {"query": "x", "k": 10**9, "collection": "kbase"}, "k must be between"),
    ("search", {"query": "x", "filter": {"year": {"$regex": "a"}}, "collection": "kbase"}, "malformed filter"),
    ("search", {"query": "x", "collection": "nowhere"}, "does not exist"),
    ("search", {"query": "a\x00b", "collection": "kbase"}, "NUL"),
    ("ingest_text", {"text": "a\x00b", "collection": "kbase"}, "NUL"),
    ("ingest_path", {"path": "/etc/passwd", "collection": "kbase"}, "outside the allowed roots"),
    ("delete_document", {"doc_id": "nope", "collection": "kbase"}, "not in collection"),
    ("search", {"query": 5}, "validation error"),
])
async def test_bad_input_is_a_tool_error_and_changes_nothing(server, engine, tool, args, needle):
    before = snapshot(engine, "kbase")
    async with Client(server) as client:
        res = await client.call_tool(tool, args)
        assert res.is_error
        assert needle in res.content[0].text
        assert (await client.call_tool("stats", {"collection": "kbase"})).structured_content["in_sync"]
    assert snapshot(engine, "kbase") == before


async def test_ingest_path_reports_progress(server, roots):
    for i in range(3):
        (roots / f"note{i}.md").write_text(f"# Note {i}\n\nThe quarterly planning meeting number {i} is on Tuesday.\n")
    events = []

    async def on_progress(progress, total, message):
        events.append((progress, total, message))

    async with Client(server) as client:
        res = await client.call_tool("ingest_path", {"path": str(roots), "collection": "notes"}, progress_callback=on_progress)
        assert not res.is_error and res.structured_content["added"] == 3
    assert events and events[-1][0] == events[-1][1] == 3
    assert any("embedded" in (m or "") for _, _, m in events)


async def test_stdio_subprocess(settings, engine):
    engine.ingest_texts("kbase", corpus_items())
    params = StdioServerParameters(command=sys.executable, args=["-m", "servers.retrieval.server"],
                                   env=server_env(settings))
    async with Client(params) as client:
        res = await client.call_tool("search", {"query": "rate limit 429 retry", "k": 3, "collection": "kbase"})
        assert not res.is_error
        assert res.structured_content["hits"][0]["provenance"]["doc_id"] == "kb-008"


async def test_streamable_http_subprocess(settings, engine):
    engine.ingest_texts("kbase", corpus_items())
    with http_server("servers.retrieval.server", server_env(settings)) as url:
        async with Client(url) as client:
            res = await client.call_tool("search", {"query": "export invoices as CSV", "k": 3, "collection": "kbase"})
            assert not res.is_error
            assert res.structured_content["hits"][0]["provenance"]["doc_id"] == "kb-003"
            bad = await client.call_tool("search", {"query": "x", "k": 0, "collection": "kbase"})
            assert bad.is_error
