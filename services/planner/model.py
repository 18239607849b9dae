"""The model server, called as OpenAI's chat-completions API is, so OpenAI, vLLM, Ollama and
any other server that speaks it will do.

Each call is bounded by a timeout, retried with backoff on transient faults (no answer, 429,
5xx, an answer that is not a completion), and guarded by a circuit breaker, so a model
server that is down is left alone while runs escalate instead of waiting on it. The API key
is a secret reference; its value is read here and sent only in the Authorization header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry import trace

from charter import metrics, telemetry
from charter.breaker import Breakers
from charter.config import Settings
from charter.errors import RetryPolicy
from charter.secrets import Secrets

log = logging.getLogger(__name__)
_TRACER = telemetry.tracer("charter.planner.model")
CIRCUIT = "model"
MODEL_RETRY = RetryPolicy(first_delay_s=0.5, max_delay_s=8.0)
# Answers the server gives while it is unwell, or busy: the same call may succeed later.
TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# Connections of one of the model client's HTTP clients (see ModelClient).
LANE = 8


class ModelUnavailable(Exception):
    """No completion: the server is not configured, down, refusing, or its circuit is open."""


class _Transient(Exception):
    pass


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    """One completion: what the model said, the tools it called, and what it cost."""

    message: dict[str, Any]
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    prompt_tokens: int
    completion_tokens: int
    model: str | None = None
    finish_reason: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def parse(body: Any) -> Reply:
    """The first choice of a chat completion; ValueError if `body` is not one."""
    try:
        message = body["choices"][0]["message"]
        calls = tuple(
            ToolCall(str(c["id"]), str(c["function"]["name"]), str(c["function"].get("arguments") or ""))
            for c in message.get("tool_calls") or ()
        )
        usage = body.get("usage") or {}
        content = message.get("content")
        kept = {"role": "assistant", "content": content}
        if calls:
            kept["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        return Reply(
            message=kept,
            content=content if isinstance(content, str) else None,
            tool_calls=calls,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=body.get("model") if isinstance(body.get("model"), str) else None,
            finish_reason=body["choices"][0].get("finish_reason"),
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a chat completion: {type(exc).__name__} {exc}") from exc


class ModelClient:
    def __init__(
        self,
        settings: Settings,
        secrets: Secrets,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._monotonic = monotonic
        self._breakers = Breakers(settings.breaker_failures, settings.breaker_cooldown_s)
        headers = {"Content-Type": "application/json"}
        key = secrets.get(settings.llm_api_key_secret)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # Calls at once are bounded here, where the model server's capacity is known; a run over
        # the bound waits for a slot (not during a retry's backoff), and other runs go on. The
        # slots are spread over clients of LANE connections each: httpx's pool looks at
        # every connection it holds to place each request (encode/httpx#3215), which with
        # hundreds of connections in one pool cost the planner half its CPU.
        bound = settings.llm_max_concurrency
        lanes = 1 if transport is not None else -(-bound // LANE)
        self._http = [
            httpx.AsyncClient(
                base_url=(settings.llm_base_url or "").rstrip("/"),
                headers=headers,
                timeout=httpx.Timeout(settings.llm_timeout_s),
                limits=httpx.Limits(max_connections=LANE if transport is None else bound),
                transport=transport,
                # The model server is named by configuration, not by a proxy the environment sets.
                trust_env=False,
            )
            for _ in range(lanes)
        ]
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(bound):
            self._free.put_nowait(slot % lanes)

    @property
    def configured(self) -> bool:
        return bool(self._settings.llm_base_url)

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._http))

    async def complete(self, request: dict[str, Any]) -> Reply:
        """The model's next message; ModelUnavailable once retries are spent or the circuit is open.
        Its message goes into events: the key is redacted from it, should a server echo it."""
        model = str(request.get("model") or "")
        # OpenTelemetry's GenAI semantic conventions, so tracing back ends show it as a model call.
        with _TRACER.start_as_current_span(f"chat {model}", kind=trace.SpanKind.CLIENT) as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": model,
                    "gen_ai.request.temperature": float(request.get("temperature") or 0.0),
                    "server.address": self._settings.llm_base_url or "",
                }
            )
            try:
                reply = await self._complete(request)
            except ModelUnavailable as exc:
                message = str(self._secrets.redact(str(exc)))
                span.set_attribute("error.type", "model_unavailable")
                span.set_status(trace.StatusCode.ERROR, message)
                metrics.model_calls.labels(model, "unavailable").inc()
                raise ModelUnavailable(message) from exc
            span.set_attributes(
                {
                    "gen_ai.response.model": reply.model or model,
                    "gen_ai.usage.input_tokens": reply.prompt_tokens,
                    "gen_ai.usage.output_tokens": reply.completion_tokens,
                    "gen_ai.response.finish_reasons": [reply.finish_reason or ""],
                }
            )
            metrics.model_calls.labels(model, "ok").inc()
            return reply

    async def _complete(self, request: dict[str, Any]) -> Reply:
        if not self.configured:
            raise ModelUnavailable("no model server is configured (CHARTER_LLM_BASE_URL)")
        attempts = self._settings.llm_max_attempts
        for attempt in range(1, attempts + 1):
            refusal = self._breakers.admit(CIRCUIT, self._monotonic())
            if refusal is not None:
                raise ModelUnavailable(
                    f"the model server's circuit is open after {refusal.failures} failures in a row; "
                    f"retry after {refusal.retry_after_s:g}s"
                )
            try:
                reply = await self._call(request)
            except _Transient as exc:
                self._breakers.failed(CIRCUIT, self._monotonic())
                if attempt == attempts:
                    raise ModelUnavailable(f"{exc} (after {attempts} attempts)") from exc
                log.warning("model call %d/%d failed: %s", attempt, attempts, exc)
                await asyncio.sleep(MODEL_RETRY.jittered(attempt))
                continue
            except ModelUnavailable:
                self._breakers.succeeded(CIRCUIT)
                raise
            self._breakers.succeeded(CIRCUIT)
            return reply
        raise AssertionError("unreachable")

    async def _call(self, request: dict[str, Any]) -> Reply:
        lane = await self._free.get()
        try:
            response = await self._http[lane].post("/chat/completions", json=request)
        except httpx.TimeoutException as exc:
            raise _Transient(f"no answer within {self._settings.llm_timeout_s:g}s") from exc
        except httpx.TransportError as exc:
            raise _Transient(f"cannot reach the model server: {type(exc).__name__} {exc}") from exc
        finally:
            self._free.put_nowait(lane)
        if response.status_code in TRANSIENT_STATUS:
            raise _Transient(f"the model server answered {response.status_code}")
        if response.status_code >= 400:
            # 400, 401, 404: the request or the configuration is wrong; asking again will not help.
            raise ModelUnavailable(
                f"the model server refused the call: {response.status_code} {response.text[:300]}"
            )
        try:
            return parse(response.json())
        except (ValueError, json.JSONDecodeError) as exc:
            raise _Transient(f"the model server's answer is {exc}") from exc
