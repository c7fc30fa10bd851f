"""The OpenAI-compatible backend against a scripted local test double (tests/fakes/openai_compatible.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field

from core.llm import (
    ChatBackend,
    FallbackChain,
    LLMError,
    OpenAICompatibleBackend,
    backends_from_settings,
)
from core.settings import LLMSettings, ModelEndpoint, Settings
from tests.fakes.openai_compatible import FakeChatServer, Reply


class Verdict(BaseModel):
    score: float = Field(ge=0, le=1)
    reason: str


GOOD = json.dumps({"score": 0.75, "reason": "supported"})
MESSAGES = [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Judge this."}]


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def backend(fake: FakeChatServer, sleeps: Sleeps | None = None, **kw) -> OpenAICompatibleBackend:
    endpoint = ModelEndpoint(base_url=fake.base_url, model=kw.pop("model", "fake-model"), **kw)
    return OpenAICompatibleBackend(endpoint, sleep=sleeps if sleeps is not None else Sleeps())


def test_valid_json_reply_is_validated_with_usage_and_schema_request():
    with FakeChatServer([Reply(content=GOOD)]) as fake:
        got = backend(fake).complete(MESSAGES, Verdict)
    assert got.value == Verdict(score=0.75, reason="supported")
    assert got.usage.total_tokens == 18 and got.usage.prompt_tokens == 11 and got.requests == 1 and not got.repaired
    assert got.backend == "openai-compatible" and got.model == "fake-model"
    sent = fake.requests[0]
    assert sent["model"] == "fake-model" and sent["messages"] == MESSAGES and sent["temperature"] == 0.0
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["score", "reason"]


def test_json_mode_and_api_key_header(monkeypatch):
    monkeypatch.setenv("FAKE_KEY_VAR", "sk-test-123")
    with FakeChatServer([Reply(content="```json\n" + GOOD + "\n```")]) as fake:
        got = backend(fake, response_format="json_object", api_key_env="FAKE_KEY_VAR").complete(MESSAGES, Verdict)
    assert got.value.score == 0.75  # a fenced reply is accepted
    assert fake.requests[0]["response_format"] == {"type": "json_object"}
    assert fake.headers[0]["Authorization"] == "Bearer sk-test-123"


def test_invalid_json_then_valid_is_repaired_once():
    with FakeChatServer([Reply(content="Sure! The score is high."), Reply(content=GOOD)]) as fake:
        got = backend(fake).complete(MESSAGES, Verdict)
    assert got.repaired and got.requests == 2 and got.usage.total_tokens == 36
    repair = fake.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! The score is high."}
    assert "not JSON" in repair[-1]["content"] and '"score"' in repair[-1]["content"]


def test_schema_violation_twice_raises_a_clear_error():
    bad = json.dumps({"score": 7, "reason": "x"})
    with FakeChatServer([Reply(content=bad), Reply(content=bad)]) as fake:
        with pytest.raises(LLMError, match=r"no valid Verdict after one repair attempt.*score"):
            backend(fake).complete(MESSAGES, Verdict)
    assert len(fake.requests) == 2


def test_429_then_success_honours_retry_after():
    sleeps = Sleeps()
    with FakeChatServer([Reply(status=429, headers={"Retry-After": "3"}), Reply(content=GOOD)]) as fake:
        got = backend(fake, sleeps, backoff=0.25).complete(MESSAGES, Verdict)
    assert got.value.score == 0.75 and got.requests == 2
    assert sleeps == [3.0]  # the server's Retry-After, not our 0.25 s backoff


def test_5xx_backoff_doubles_and_gives_up_with_the_status():
    sleeps = Sleeps()
    with FakeChatServer([]) as fake:  # default reply: HTTP 500
        with pytest.raises(LLMError, match=r"failed after 3 tries: HTTP 500: scripted failure"):
            backend(fake, sleeps, retries=2, backoff=0.5).complete(MESSAGES, Verdict)
    assert sleeps == [0.5, 1.0] and len(fake.requests) == 3


def test_client_error_is_not_retried():
    sleeps = Sleeps()
    with FakeChatServer([Reply(status=401, content="bad key")]) as fake:
        with pytest.raises(LLMError, match="refused the request: HTTP 401: bad key"):
            backend(fake, sleeps).complete(MESSAGES, Verdict)
    assert sleeps == [] and len(fake.requests) == 1


def test_timeout_is_retried_then_reported():
    with FakeChatServer([Reply(content=GOOD, delay=1.0), Reply(content=GOOD)]) as fake:
        got = backend(fake, timeout=0.2, retries=1).complete(MESSAGES, Verdict)
    assert got.value.score == 0.75 and got.requests == 2
    with FakeChatServer([Reply(content=GOOD, delay=1.0)]) as fake:
        with pytest.raises(LLMError, match=r"timed out after 0.2 s"):
            backend(fake, timeout=0.2, retries=0).complete(MESSAGES, Verdict)


def test_fallback_chain_moves_on_and_says_who_answered():
    with FakeChatServer([]) as broken, FakeChatServer([Reply(content=GOOD)]) as good:
        chain = FallbackChain([backend(broken, retries=1, model="big"), backend(good, model="small")])
        assert isinstance(chain, ChatBackend)
        got = chain.complete(MESSAGES, Verdict)
    assert got.model == "small" and len(broken.requests) == 2
    with FakeChatServer([]) as broken:
        with pytest.raises(LLMError, match="every backend failed: big at"):
            FallbackChain([backend(broken, retries=0, model="big")]).complete(MESSAGES, Verdict)


def test_no_endpoint_configured_means_no_backend_and_no_request(monkeypatch):
    assert backends_from_settings(LLMSettings()) == []
    monkeypatch.setenv("GUARDRAG_LLM__BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("GUARDRAG_LLM__MODEL", "m1")
    monkeypatch.setenv("GUARDRAG_LLM__API_KEY", "sk-env")
    monkeypatch.setenv("GUARDRAG_LLM__FALLBACKS", '[{"base_url": "http://127.0.0.1:10/v1", "model": "m2"}]')
    llm = Settings().llm
    assert [e.model for e in llm.chain()] == ["m1", "m2"] and "sk-env" not in repr(llm)
    backends = backends_from_settings(llm)
    assert backends[0]._client.headers["Authorization"] == "Bearer sk-env"
    assert "Authorization" not in backends[1]._client.headers
