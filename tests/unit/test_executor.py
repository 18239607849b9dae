from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import BaseModel

from charter.events import ActionApproved, ActionExecuted, ActionFailed
from charter.tools import ToolContext, ToolError, http_tool, tool
from services.executor import decide
from services.executor.tools import ToolFailure, call
from tests.factories import NOW, one_of_each

APPROVED = next(e for e in one_of_each() if isinstance(e, ActionApproved))


def test_the_idempotency_key_is_the_run_and_step() -> None:
    assert decide.idempotency_key(APPROVED) == f"{APPROVED.envelope.run_id}:1"


def test_a_new_key_is_called() -> None:
    assert decide.plan(None, idempotent=False) == decide.Plan("call", 1)


def test_a_completed_key_replays_its_outcome() -> None:
    outcome = decide.executed(APPROVED, {"ok": True}, 2.0, 1, NOW)
    plan = decide.plan(decide.Execution("completed", 1, outcome), idempotent=False)
    assert plan.kind == "replay"
    assert plan.recorded == outcome


def test_an_in_doubt_key_is_retried_only_for_idempotent_tools() -> None:
    started = decide.Execution("started", 1, None)
    assert decide.plan(started, idempotent=True) == decide.Plan("call", 2)
    assert decide.plan(started, idempotent=False).kind == "in_doubt"


def test_outcome_ids_derive_from_the_key() -> None:
    ok = decide.executed(APPROVED, {"a": 1}, 1.0, 1, NOW)
    bad = decide.failed(APPROVED, "x", "E", 1, NOW, in_doubt=True)
    assert isinstance(ok, ActionExecuted)
    assert isinstance(bad, ActionFailed)
    assert ok.event_id == bad.event_id  # one outcome per step, whichever it is
    assert bad.in_doubt


class Params(BaseModel):
    n: int


class Result(BaseModel):
    doubled: int


@tool(timeout_s=0.2)
def double(params: Params, ctx: ToolContext) -> Result:
    return Result(doubled=params.n * 2)


@tool(timeout_s=0.1)
async def slow(params: Params, ctx: ToolContext) -> Result:
    await asyncio.sleep(1)
    return Result(doubled=0)


@tool()
def liar(params: Params, ctx: ToolContext) -> Result:
    return {"doubled": "not a number"}  # type: ignore[return-value]


@tool()
def refusing(params: Params, ctx: ToolContext) -> Result:
    raise ToolError("the ledger is closed", retryable=True)


@tool()
def crashing(params: Params, ctx: ToolContext) -> Result:
    return Result(doubled=1 // params.n)


def test_a_tool_error_is_a_failure_with_its_retryability(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="the ledger is closed") as err:
        asyncio.run(_call(refusing.__charter_tool__, {"n": 1}, ctx))  # type: ignore[attr-defined]
    assert err.value.retryable
    with pytest.raises(ToolFailure, match="ZeroDivisionError") as crash:
        asyncio.run(_call(crashing.__charter_tool__, {"n": 0}, ctx))  # type: ignore[attr-defined]
    assert not crash.value.retryable


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(
        idempotency_key="run:0", run_id="run", agent="a", environment="staging", data_dir=tmp_path
    )


async def _call(
    spec: Any,
    params: dict[str, Any],
    ctx: ToolContext,
    hosts: frozenset[str] = frozenset(),
    limit: int = 10_000,
) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return await call(spec, params, ctx, http=client, allowed_hosts=hosts, max_result_bytes=limit)


def test_a_python_tool_runs_with_validated_parameters_and_result(ctx: ToolContext) -> None:
    spec = double.__charter_tool__  # type: ignore[attr-defined]
    assert asyncio.run(_call(spec, {"n": 21}, ctx)) == {"doubled": 42}
    with pytest.raises(ToolFailure, match="invalid parameters") as bad:
        asyncio.run(_call(spec, {"n": "x"}, ctx))
    assert not bad.value.retryable


def test_a_slow_tool_times_out_as_retryable(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="timed out") as err:
        asyncio.run(_call(slow.__charter_tool__, {"n": 1}, ctx))  # type: ignore[attr-defined]
    assert err.value.retryable


def test_a_result_that_breaks_its_schema_fails(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="invalid result"):
        asyncio.run(_call(liar.__charter_tool__, {"n": 1}, ctx))  # type: ignore[attr-defined]


def test_a_result_over_the_size_limit_fails(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="exceeds"):
        asyncio.run(_call(double.__charter_tool__, {"n": 1}, ctx, limit=5))  # type: ignore[attr-defined]


class _Endpoint(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Endpoint.calls.append({"path": self.path, "key": self.headers.get("Idempotency-Key"), "body": body})
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", "http://example.invalid/steal")
            self.end_headers()
            return
        code = 503 if self.path == "/down" else 200
        payload = json.dumps({"doubled": body["n"] * 2} if code == 200 else {"error": "down"}).encode()
        if self.path == "/huge":
            payload = json.dumps({"doubled": 1, "pad": "x" * 50_000}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Endpoint.calls.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_tool_sends_the_idempotency_key(endpoint: str, ctx: ToolContext) -> None:
    spec = http_tool("double", method="POST", url=f"{endpoint}/ok", params=Params, result=Result)
    assert asyncio.run(_call(spec, {"n": 4}, ctx, frozenset({"127.0.0.1"}))) == {"doubled": 8}
    assert _Endpoint.calls == [{"path": "/ok", "key": "run:0", "body": {"n": 4}}]


def test_an_http_tool_to_a_host_not_allowlisted_is_never_called(endpoint: str, ctx: ToolContext) -> None:
    spec = http_tool("double", method="POST", url=f"{endpoint}/ok", params=Params)
    with pytest.raises(ToolFailure, match="not allowlisted"):
        asyncio.run(_call(spec, {"n": 4}, ctx, frozenset({"example.com"})))
    assert _Endpoint.calls == []


def test_redirects_are_not_followed(endpoint: str, ctx: ToolContext) -> None:
    spec = http_tool("double", method="POST", url=f"{endpoint}/redirect", params=Params)
    with pytest.raises(ToolFailure, match="HTTP 307") as err:
        asyncio.run(_call(spec, {"n": 4}, ctx, frozenset({"127.0.0.1"})))
    assert not err.value.retryable
    assert len(_Endpoint.calls) == 1


def test_server_errors_are_retryable_and_responses_are_capped(endpoint: str, ctx: ToolContext) -> None:
    down = http_tool("double", method="POST", url=f"{endpoint}/down", params=Params)
    with pytest.raises(ToolFailure, match="HTTP 503") as err:
        asyncio.run(_call(down, {"n": 4}, ctx, frozenset({"127.0.0.1"})))
    assert err.value.retryable
    huge = http_tool("double", method="POST", url=f"{endpoint}/huge", params=Params)
    with pytest.raises(ToolFailure, match="exceeds"):
        asyncio.run(_call(huge, {"n": 4}, ctx, frozenset({"127.0.0.1"}), limit=1000))


def test_an_unreachable_endpoint_is_retryable(ctx: ToolContext) -> None:
    spec = http_tool("double", method="POST", url="http://127.0.0.1:9/x", params=Params)
    with pytest.raises(ToolFailure) as err:
        asyncio.run(_call(spec, {"n": 4}, ctx, frozenset({"127.0.0.1"})))
    assert err.value.retryable


def test_a_kill_switch_refusal_is_the_steps_one_outcome() -> None:
    refusal = decide.refused(APPROVED, "kill switch on for agent support-refunds (by ops: fraud)", NOW)
    assert refusal.rejected_by == "kill-switch"
    assert refusal.decision.outcome == "deny"
    assert refusal.decision.limit == "kill_switch"
    assert refusal.event_id == decide.executed(APPROVED, {}, 1.0, 1, NOW).event_id


def test_only_approvals_policy_decided_may_run() -> None:
    human = APPROVED.model_copy(update={"approved_by": "dana", "revalidated": False})
    assert not human.executable
    assert human.model_copy(update={"revalidated": True}).executable
    assert APPROVED.model_copy(update={"approved_by": "policy", "revalidated": False}).executable
