"""Model backends: one interface, an OpenAI-compatible chat-completions client, and a fallback chain.

A backend answers a list of chat messages with a **validated pydantic object**:

    backend.complete(messages, MyReply) -> Completion[MyReply]

:class:`OpenAICompatibleBackend` speaks the chat-completions API over httpx
(Ollama, vLLM, llama.cpp server, hosted APIs). It asks for JSON by JSON schema
or JSON mode, retries with exponential backoff on 429, 5xx, timeouts and
connection errors (a ``Retry-After`` header wins), validates the reply against
the model, makes **one repair attempt** when the reply is not valid, and
otherwise raises :class:`LLMError` with a message saying what failed, so that a
:class:`FallbackChain` moves on to the next backend. Token usage is summed
over every request made (the API's ``usage`` field).

No MCP here, and no request at all unless an endpoint is configured
(``Settings.llm``; nothing is by default).
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import httpx
from pydantic import BaseModel, Field, ValidationError

from core.errors import Unavailable
from core.settings import LLMSettings, ModelEndpoint

__all__ = [
    "ChatBackend",
    "Completion",
    "FallbackChain",
    "LLMError",
    "OpenAICompatibleBackend",
    "TokenUsage",
    "backends_from_settings",
]

M = TypeVar("M", bound=BaseModel)
Message = dict[str, str]

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMError(Unavailable):
    """A model backend could not produce a valid reply (after its retries and its repair attempt)."""

    code = "llm_error"


class TokenUsage(BaseModel):
    """Tokens a model call used, as the API reported them (summed over retries and repairs)."""

    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    total_tokens: int = Field(0, ge=0)

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                          completion_tokens=self.completion_tokens + other.completion_tokens,
                          total_tokens=self.total_tokens + other.total_tokens)


class Completion(BaseModel, Generic[M]):
    """A validated reply and how it was obtained."""

    value: M
    backend: str = Field(description="Backend kind, e.g. 'openai-compatible'.")
    model: str = Field(description="Model name (and endpoint) that answered.")
    usage: TokenUsage = Field(default_factory=TokenUsage)
    requests: int = Field(1, description="HTTP requests made, retries and the repair included.")
    repaired: bool = Field(False, description="True when the first reply was invalid and the repair attempt fixed it.")
    latency_ms: float = 0.0


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that turns chat messages into a validated pydantic object.

    ``complete`` raises :class:`LLMError` when it cannot; it never returns an unvalidated value."""

    name: str
    model: str

    def complete(self, messages: Sequence[Message], schema: type[M], *, schema_name: str | None = None) -> Completion[M]:
        ...


class OpenAICompatibleBackend:
    """Chat-completions client for one endpoint (``POST {base_url}/chat/completions``).

    ``sleep`` is injectable so tests need not wait out real backoffs. Thread-safe (one httpx.Client)."""

    name = "openai-compatible"

    def __init__(self, endpoint: ModelEndpoint, *, api_key: str | None = None,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint = endpoint
        self.model = endpoint.model
        key = api_key if api_key is not None else (os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(base_url=endpoint.base_url.rstrip("/") + "/", headers=headers,
                                    timeout=httpx.Timeout(endpoint.timeout), transport=transport,
                                    follow_redirects=False, trust_env=False)
        self._sleep = sleep
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend(model={self.model!r}, base_url={self.endpoint.base_url!r})"

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ the one public call

    def complete(self, messages: Sequence[Message], schema: type[M], *, schema_name: str | None = None) -> Completion[M]:
        """Ask the model; return its reply validated as ``schema`` or raise :class:`LLMError`."""
        started = time.perf_counter()
        name = _schema_name(schema_name or schema.__name__)
        convo = [dict(m) for m in messages]
        body = self._body(convo, schema, name)
        usage, requests = TokenUsage(), 0
        content, usage_1, n = self._post(body)
        usage, requests = usage + usage_1, requests + n
        try:
            value = _parse(content, schema)
            repaired = False
        except _InvalidReply as first:
            # One repair attempt: show the model its reply and what was wrong with it.
            convo += [{"role": "assistant", "content": content[:4000]},
                      {"role": "user", "content": _repair_prompt(first.reason, schema)}]
            content, usage_2, n = self._post(self._body(convo, schema, name))
            usage, requests = usage + usage_2, requests + n
            try:
                value = _parse(content, schema)
            except _InvalidReply as second:
                raise LLMError(f"{self.model} at {self.endpoint.base_url} gave no valid {schema.__name__} "
                               f"after one repair attempt: {second.reason}",
                               details={"backend": self.name, "model": self.model, "requests": requests}) from None
            repaired = True
        return Completion[schema](value=value, backend=self.name, model=self.model, usage=usage, requests=requests,
                                  repaired=repaired, latency_ms=round((time.perf_counter() - started) * 1000, 3))

    # ------------------------------------------------------------------ internals

    def _body(self, messages: list[Message], schema: type[BaseModel], name: str) -> dict[str, Any]:
        ep = self.endpoint
        body: dict[str, Any] = {"model": ep.model, "messages": messages, "temperature": ep.temperature,
                                "max_tokens": ep.max_tokens, "stream": False}
        if ep.response_format == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": name, "schema": schema.model_json_schema()}}
        elif ep.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    def _post(self, body: dict[str, Any]) -> tuple[str, TokenUsage, int]:
        """POST with retries; return (message content, usage, requests made)."""
        ep = self.endpoint
        last = ""
        for attempt in range(ep.retries + 1):
            wait = min(ep.max_backoff, ep.backoff * (2 ** attempt))
            try:
                response = self._client.post("chat/completions", json=body)
            except httpx.TimeoutException:
                last = f"timed out after {ep.timeout:g} s"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if response.status_code == 200:
                    return (*_content_and_usage(response, self.model), attempt + 1)
                last = f"HTTP {response.status_code}: {_error_text(response)}"
                if response.status_code not in _RETRY_STATUS:
                    raise LLMError(f"{self.model} at {ep.base_url} refused the request: {last}",
                                   details={"backend": self.name, "model": self.model, "status": response.status_code})
                asked = _retry_after(response)
                if asked is not None:
                    wait = min(ep.max_backoff, asked)
            if attempt < ep.retries:
                self._sleep(wait)
        raise LLMError(f"{self.model} at {ep.base_url} failed after {ep.retries + 1} tries: {last}",
                       details={"backend": self.name, "model": self.model})


class FallbackChain:
    """Backends tried in order; the first valid reply wins. ``errors`` of the last call say who failed and why."""

    name = "fallback-chain"

    def __init__(self, backends: Sequence[ChatBackend]) -> None:
        if not backends:
            raise ValueError("a fallback chain needs at least one backend")
        self.backends = list(backends)
        self.model = " > ".join(b.model for b in self.backends)

    def complete(self, messages: Sequence[Message], schema: type[M], *, schema_name: str | None = None) -> Completion[M]:
        failures: list[str] = []
        for backend in self.backends:
            try:
                return backend.complete(messages, schema, schema_name=schema_name)
            except LLMError as exc:
                failures.append(exc.message)
        raise LLMError("every backend failed: " + " | ".join(failures), details={"failures": failures})


def backends_from_settings(llm: LLMSettings) -> list[OpenAICompatibleBackend]:
    """One client per configured endpoint, in chain order (empty when no model is configured)."""
    backends = []
    for i, endpoint in enumerate(llm.chain()):
        key = None
        if i == 0 and llm.base_url and llm.model and llm.api_key is not None:
            key = llm.api_key.get_secret_value()
        backends.append(OpenAICompatibleBackend(endpoint, api_key=key))
    return backends


# ---------------------------------------------------------------------- helpers


class _InvalidReply(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def _parse(content: str, schema: type[M]) -> M:
    """The reply as ``schema``: plain JSON, JSON in a code fence, or the outermost {...} of the text."""
    text = content.strip()
    if not text:
        raise _InvalidReply("the reply was empty")
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        start, end = text.find("{"), text.rfind("}")
        try:
            data = json.loads(text[start : end + 1]) if 0 <= start < end else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            raise _InvalidReply(f"the reply is not JSON ({exc.msg} at character {exc.pos})") from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
        raise _InvalidReply(f"the JSON does not match the schema ({problems})") from None


def _repair_prompt(reason: str, schema: type[BaseModel]) -> str:
    return (f"Your previous reply could not be used: {reason}. Reply again with only one JSON object that "
            f"matches this JSON schema, no prose and no code fence:\n{json.dumps(schema.model_json_schema())}")


def _content_and_usage(response: httpx.Response, model: str) -> tuple[str, TokenUsage]:
    try:
        data = response.json()
        content = data["choices"][0]["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        # A 200 without a chat-completions body is an endpoint problem, not the model's: no repair.
        raise LLMError(f"{model}: the endpoint's reply is not a chat completion: {response.text[:200]!r}") from None
    raw = data.get("usage") or {}
    try:
        usage = TokenUsage(prompt_tokens=int(raw.get("prompt_tokens") or 0),
                           completion_tokens=int(raw.get("completion_tokens") or 0),
                           total_tokens=int(raw.get("total_tokens") or 0))
        if not usage.total_tokens:
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    except (TypeError, ValueError, ValidationError, AttributeError):
        usage = TokenUsage()
    return str(content), usage


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks us to wait (``Retry-After`` as seconds or an HTTP date), if it says."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    except ValueError:
        pass
    return response.text[:300] or response.reason_phrase


def _schema_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "reply"
