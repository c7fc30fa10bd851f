"""No outbound connection unless configured.

A real subprocess imports guardrag, opens the retrieval engine on a fresh data dir, ingests text
and files, searches, then starts the retrieval MCP server over stdio (a grandchild) and calls
``search`` through the official MCP client. It runs with none of the opt-out variables
(``ORT_DISABLE_TELEMETRY``, ``ANONYMIZED_TELEMETRY``, ``HF_HUB_OFFLINE`` ...) in its environment:
the product has to set them itself. Three independent watchers:

1. a network namespace without network (``unshare -n``, loopback up): the work must succeed there;
2. a Python audit hook (a generated ``sitecustomize.py`` first on ``PYTHONPATH``, so it is active
   in the child and in the server it spawns) recording every ``socket.connect`` / ``sendto`` /
   ``sendmsg`` to a non-loopback address and every ``getaddrinfo`` / ``gethostbyname`` /
   ``gethostbyaddr`` of a name other than localhost;
3. ``strace -f`` on connect/sendto/sendmsg, which also sees native code (onnxruntime's C++
   telemetry, Chroma's Rust core) that the Python hook cannot.

A positive control runs a script that does make such attempts, to prove each watcher catches them.
The namespace and strace are used when the machine allows them (root, strace installed); the audit
hook always is.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "tests" / "data" / "docs"

#: opt-out switches the product must set by itself (core/offline.py and DESIGN.md); never given to the child
SWITCHES = [
    "ORT_DISABLE_TELEMETRY", "ANONYMIZED_TELEMETRY", "CHROMA_TELEMETRY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY", "HF_DATASETS_OFFLINE", "DO_NOT_TRACK", "TOKENIZERS_PARALLELISM",
]

SITECUSTOMIZE = r'''
"""Test-only audit hook: record outbound network attempts of this process to $GUARDRAG_TEST_NETLOG."""
import ipaddress
import json
import os
import socket
import sys

_LOG = os.environ.get("GUARDRAG_TEST_NETLOG")
_LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_INET = (socket.AF_INET, socket.AF_INET6)


def _write(record):
    record["pid"] = os.getpid()
    line = (json.dumps(record, default=repr) + "\n").encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _is_local(host):
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    host = str(host).strip().strip("[]").lower().rstrip(".")
    if host in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _hook(event, args):
    if not event.startswith("socket."):
        return
    try:
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            sock, address = args[0], args[1]
            if sock.family not in _INET or address is None:
                return
            host = address[0]
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
            host = args[0]
        elif event == "socket.getnameinfo":
            host = args[0][0]
        else:
            return
        if not _is_local(host):
            _write({"kind": "net", "event": event, "host": host, "args": [repr(a)[:200] for a in args[1:]]})
    except Exception as exc:  # never break the program under test; but say so
        _write({"kind": "hook-error", "event": event, "error": repr(exc)})


if _LOG:
    sys.addaudithook(_hook)
    _write({"kind": "installed", "argv": list(getattr(sys, "orig_argv", []))})
'''

CHILD = r'''
"""Exercise guardrag the way a user would, with no network and no opt-out variables given."""
import asyncio
import json
import os
import sys

out_path, switches, docs = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
report = {"env_before": {k: os.environ.get(k) for k in switches}}
original_env = dict(os.environ)  # what an IDE would hand the server: no opt-outs either

import core  # the product, first
import guards, graph  # noqa: E401,F401  (the rest of the product's libraries)
from core.settings import Settings
from servers.retrieval.engine import RetrievalEngine, TextItem

report["env_after_import"] = {k: os.environ.get(k) for k in switches}
engine = RetrievalEngine(Settings())
engine.warm_up()
res = engine.ingest_texts("offline", [
    TextItem(text="The failover runbook for cluster KESTREL-42: drain the primary, promote the replica, "
                  "then repoint DNS.", doc_id="runbook", title="Failover runbook", metadata={"team": "ops"}),
    TextItem(text="Lunch is served at noon in the cafeteria on the second floor.", doc_id="lunch"),
])
report["added_texts"] = res.added
files = engine.ingest_path("offline", docs)
report["added_files"] = files.added
report["failed_files"] = files.failed
hit = engine.search("offline", "KESTREL-42 failover", k=1).hits[0]
report["engine_top"] = hit.provenance.doc_id
report["engine_in_sync"] = engine.stats("offline").in_sync
from guards.pii import scan_pii  # Presidio + spaCy + tldextract: known to reach for the network

text = "Write to kim@example.com from 10.1.2.3."
report["pii"] = sorted(text[f.start:f.end] for f in scan_pii(text).findings)


async def via_mcp():
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "servers.retrieval.server"],
                                   env=original_env, cwd=os.getcwd())
    async with Client(params) as client:
        found = await client.call_tool("search", {"query": "how do I promote the replica", "k": 1,
                                                  "collection": "offline"})
        assert not found.is_error, found.content
        return found.structured_content["hits"][0]["provenance"]["doc_id"]


report["mcp_top"] = asyncio.run(via_mcp())
with open(out_path, "w") as fh:
    json.dump(report, fh)
'''

CONTROL = r'''
"""Positive control: deliberate outbound attempts that every watcher must notice."""
import socket

try:
    socket.getaddrinfo("example.com", 443)
except OSError:
    pass
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1)
print("connect errno", s.connect_ex(("192.0.2.7", 443)))  # TEST-NET-1, never routed
s.close()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1)
s.connect_ex(("127.0.0.1", 9))  # loopback: allowed, must not be reported
s.close()
'''

_STRACE_ADDR = re.compile(r'sin_addr=inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def _netns_works() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


NETNS = _netns_works()
STRACE = shutil.which("strace")


def _is_loopback(addr: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


class Sandbox:
    """Runs a Python script under every available watcher and collects what they saw."""

    def __init__(self, base: Path):
        self.base = base
        self.hook_dir = base / "hook"
        self.hook_dir.mkdir(parents=True)
        (self.hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.netlog = base / "netlog.jsonl"
        self.strace_log = base / "strace.log"

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in SWITCHES and not k.startswith(("GUARDRAG_", "PYTHON", "HF_", "CHROMA_"))}
        for key in _product_switches():
            env.pop(key, None)
        env["PYTHONPATH"] = os.pathsep.join([str(self.hook_dir), str(REPO)])
        env["GUARDRAG_TEST_NETLOG"] = str(self.netlog)
        env["RES_OPTIONS"] = "timeout:1 attempts:1"  # a stray DNS query fails fast instead of hanging
        env.update(extra)
        return env

    def run(self, script: str, args: list[str], extra_env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        path = self.base / "script.py"
        path.write_text(textwrap.dedent(script))
        cmd = [sys.executable, str(path), *args]
        if STRACE:
            cmd = [STRACE, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg,sendmmsg",
                   "-e", "signal=none", "-o", str(self.strace_log), "--", *cmd]
        if NETNS:
            cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh", *cmd]
        return subprocess.run(cmd, check=False, cwd=REPO, env=self.env(extra_env), capture_output=True, text=True,
                              timeout=timeout)

    def hook_records(self) -> list[dict]:
        if not self.netlog.exists():
            return []
        return [json.loads(line) for line in self.netlog.read_text().splitlines() if line.strip()]

    def strace_outbound(self) -> list[str]:
        """strace lines that name a non-loopback IPv4/IPv6 address."""
        if not STRACE:
            return []
        bad = []
        for line in self.strace_log.read_text().splitlines():
            for v4, v6 in _STRACE_ADDR.findall(line):
                if not _is_loopback(v4 or v6):
                    bad.append(line.strip())
        return bad


def _product_switches() -> list[str]:
    """Whatever the product sets is withheld from the child too."""
    from core.offline import _DEFAULTS

    return list(_DEFAULTS)


def _watchers() -> str:
    return f"netns={'yes' if NETNS else 'no'} audit-hook=yes strace={'yes' if STRACE else 'no'}"


def test_watchers_catch_a_deliberate_attempt(tmp_path):
    box = Sandbox(tmp_path)
    proc = box.run(CONTROL, [], {}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    records = box.hook_records()
    assert [r for r in records if r["kind"] == "installed"], "the audit hook was not installed in the child"
    seen = {(r["event"], r["host"]) for r in records if r["kind"] == "net"}
    assert ("socket.getaddrinfo", "example.com") in seen, (_watchers(), records)
    assert ("socket.connect", "192.0.2.7") in seen, (_watchers(), records)
    assert not any(r["host"] == "127.0.0.1" for r in records if r["kind"] == "net"), "loopback was reported"
    assert not [r for r in records if r["kind"] == "hook-error"], records
    if STRACE:
        outbound = box.strace_outbound()
        assert any('"192.0.2.7"' in line for line in outbound), outbound
        assert not any('"127.0.0.1"' in line for line in outbound)
    if NETNS:  # the namespace really has no route out
        assert f"connect errno {errno.ENETUNREACH}" in proc.stdout, proc.stdout


def test_product_makes_no_outbound_connection(tmp_path, model_dir):
    box = Sandbox(tmp_path)
    data_dir = tmp_path / "data"
    out = tmp_path / "report.json"
    extra = {
        "GUARDRAG_DATA_DIR": str(data_dir),
        "GUARDRAG_MODEL_DIR": str(model_dir),
        "GUARDRAG_CONFIG": str(tmp_path / "no-such-guardrag.toml"),
        "GUARDRAG_RETRIEVAL__ROOTS": json.dumps([str(DOCS)]),
    }
    switches = sorted(set(SWITCHES) | set(_product_switches()))
    proc = box.run(CHILD, [str(out), json.dumps(switches), str(DOCS)], extra, timeout=240)
    assert proc.returncode == 0, f"{_watchers()}\n{proc.stderr[-4000:]}"

    # the work succeeded (inside the namespace when there is one)
    report = json.loads(out.read_text())
    assert report["env_before"] == {k: None for k in switches}, "the test leaked an opt-out variable to the child"
    after = report["env_after_import"]
    assert after["ORT_DISABLE_TELEMETRY"] == "1"
    assert after["ANONYMIZED_TELEMETRY"].lower() == "false"
    assert after["HF_HUB_OFFLINE"] == "1"
    assert report["added_texts"] == 2 and report["added_files"] == 3 and report["failed_files"] == 0
    assert report["engine_top"] == "runbook" and report["engine_in_sync"]
    assert report["mcp_top"] == "runbook"
    assert report["pii"] == ["10.1.2.3", "kim@example.com"]

    # the audit hook ran in the child and in the MCP server it started, and saw nothing leave
    records = box.hook_records()
    installed = [r for r in records if r["kind"] == "installed"]
    assert any("servers.retrieval.server" in r["argv"] for r in installed), installed
    assert not [r for r in records if r["kind"] == "hook-error"], records
    outbound = [r for r in records if r["kind"] == "net"]
    assert outbound == [], f"outbound attempts ({_watchers()}): {outbound}"
    assert box.strace_outbound() == [], f"native outbound attempts ({_watchers()})"
