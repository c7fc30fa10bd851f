"""TEST DOUBLE: a fake OpenAI-compatible chat-completions server on 127.0.0.1.

It is not a model. It answers ``POST /v1/chat/completions`` with replies scripted by
the test, one per request, in order, and records every request it received:

    with FakeChatServer([Reply(content='{"ok": true}'), Reply(status=429, headers={"Retry-After": "0"})]) as fake:
        backend = OpenAICompatibleBackend(ModelEndpoint(base_url=fake.base_url, model="fake-model"))

A :class:`Reply` can be a valid or invalid completion, an HTTP error with headers,
or a delay longer than the client's timeout. When the script runs out, ``default``
answers (HTTP 500 unless the test sets one). A real HTTP server
(``http.server.ThreadingHTTPServer``) in a daemon thread: the client under test goes
through its real httpx stack, sockets included.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer. ``content`` becomes the assistant message; ``body`` replaces the whole JSON body."""

    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    usage: dict[str, int] | None = field(default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 7,
                                                                   "total_tokens": 18})
    body: Any = None


def completion(content: str, model: str = "fake-model", usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A chat-completions response body carrying ``content``."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


class FakeChatServer:
    """Scripted chat-completions server; ``requests`` holds the JSON bodies received, in order."""

    def __init__(self, script: Iterable[Reply] = (), *, default: Reply | Callable[[dict], Reply] | None = None) -> None:
        self.script = list(script)
        self.default = default or Reply(status=500, content=None, body={"error": {"message": "scripted failure"}})
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def next_reply(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.script:
                return self.script.pop(0)
        return self.default(request) if callable(self.default) else self.default

    def __enter__(self) -> FakeChatServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                try:
                    request = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "body is not JSON"}}, {})
                    return
                with fake._lock:
                    fake.headers.append(dict(self.headers))
                reply = fake.next_reply(request)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.body is not None:
                    body = reply.body
                elif reply.status == 200:
                    body = completion(reply.content or "", request.get("model", "fake-model"), reply.usage)
                else:
                    body = {"error": {"message": reply.content or f"scripted HTTP {reply.status}"}}
                try:
                    self._send(reply.status, body, reply.headers)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="fake-chat-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()
