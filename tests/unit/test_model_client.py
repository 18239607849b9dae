"""The model server's client: retries, the circuit breaker, the key, and what counts as a reply.
The transport is httpx's mock; the end-to-end tests call a real server process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from charter.config import Settings
from charter.errors import RetryPolicy
from charter.secrets import Secrets
from services.planner import model
from services.planner.model import ModelClient, ModelUnavailable

COMPLETION = {
    "choices": [
        {
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}
                ],
            }
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3},
}


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "MODEL_RETRY", RetryPolicy(first_delay_s=0.0, max_delay_s=0.0))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def client(
    answer: Callable[[httpx.Request], httpx.Response], clock: Clock | None = None, **settings: Any
) -> tuple[ModelClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    config = Settings(llm_base_url="http://model.test/v1", **settings)
    secrets = Secrets({"LLM_API_KEY": "sk-unit-0123456789"})
    made = ModelClient(config, secrets, transport=httpx.MockTransport(handler), monotonic=clock or Clock())
    return made, seen


def complete(c: ModelClient) -> model.Reply:
    return asyncio.run(c.complete({"model": "m", "messages": []}))


def test_a_completion_is_parsed_and_the_key_sent_as_a_bearer_token() -> None:
    c, seen = client(lambda r: httpx.Response(200, json=COMPLETION))
    reply = complete(c)
    assert [(t.id, t.name, t.arguments) for t in reply.tool_calls] == [("c1", "lookup_order", "{}")]
    assert (reply.prompt_tokens, reply.completion_tokens, reply.tokens) == (12, 3, 15)
    assert reply.message["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert str(seen[0].url) == "http://model.test/v1/chat/completions"
    assert seen[0].headers["Authorization"] == "Bearer sk-unit-0123456789"
    assert json.loads(seen[0].content)["model"] == "m"


def test_transient_failures_are_retried_then_succeed() -> None:
    answers = iter(
        [httpx.Response(503), httpx.Response(200, text="not json"), httpx.Response(200, json=COMPLETION)]
    )
    c, seen = client(lambda r: next(answers), llm_max_attempts=3)
    assert complete(c).tool_calls
    assert len(seen) == 3


def test_a_refusal_is_not_retried() -> None:
    c, seen = client(lambda r: httpx.Response(401, json={"error": "bad key"}))
    with pytest.raises(ModelUnavailable, match="refused the call: 401"):
        complete(c)
    assert len(seen) == 1


def test_no_answer_after_every_attempt_is_unavailable() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    c, seen = client(down, llm_max_attempts=2)
    with pytest.raises(ModelUnavailable, match=r"cannot reach the model server.*after 2 attempts"):
        complete(c)
    assert len(seen) == 2


def test_the_circuit_opens_refuses_without_calling_then_lets_a_probe_through() -> None:
    clock = Clock()
    healthy = False

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=COMPLETION) if healthy else httpx.Response(500)

    c, seen = client(answer, clock, llm_max_attempts=1, breaker_failures=2, breaker_cooldown_s=30)
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="answered 500"):
            complete(c)
    with pytest.raises(ModelUnavailable, match="circuit is open after 2 failures"):
        complete(c)
    assert len(seen) == 2
    clock.now, healthy = 31.0, True
    assert complete(c).tool_calls
    assert len(seen) == 3


def test_no_model_server_configured_is_unavailable() -> None:
    c = ModelClient(Settings(), Secrets({}))
    with pytest.raises(ModelUnavailable, match="CHARTER_LLM_BASE_URL"):
        complete(c)


@pytest.mark.parametrize("body", [{}, {"choices": []}, {"choices": [{"message": {"tool_calls": [{}]}}]}, []])
def test_what_is_not_a_completion_is_refused(body: Any) -> None:
    with pytest.raises(ValueError, match="not a chat completion"):
        model.parse(body)


def test_a_key_the_server_echoes_is_redacted_from_the_error() -> None:
    c, _ = client(lambda r: httpx.Response(401, text=f"bad key {r.headers['Authorization']}"))
    with pytest.raises(ModelUnavailable) as caught:
        complete(c)
    assert "sk-unit-0123456789" not in str(caught.value)
    assert "[redacted]" in str(caught.value)
