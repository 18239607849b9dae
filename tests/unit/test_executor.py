from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from charter.events import ActionApproved, ActionExecuted, ActionFailed, ActionRejected
from charter.killswitch import KillSwitch
from charter.tools import ToolContext, ToolError, tool
from services.executor import decide
from services.executor.failure import ToolFailure
from services.executor.tools import Limits, call
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


def _switch() -> KillSwitch:
    return KillSwitch("s1", None, APPROVED.action.tool, reason="incident", set_by="olga", since=NOW)


def test_a_kill_switch_refuses_a_queued_action_and_leaves_a_started_one_in_doubt() -> None:
    queued = decide.uncalled(APPROVED, decide.Plan("call", 1), NOW, switch=_switch(), tool_known=True)
    assert isinstance(queued, ActionRejected)
    assert "kill switch" in queued.decision.reasons[0]
    started = decide.uncalled(APPROVED, decide.Plan("call", 2), NOW, switch=_switch(), tool_known=True)
    assert isinstance(started, ActionFailed)
    assert started.in_doubt


def test_an_unknown_tool_or_an_attempt_in_doubt_is_not_called() -> None:
    unknown = decide.uncalled(APPROVED, decide.Plan("call", 1), NOW, switch=None, tool_known=False)
    assert isinstance(unknown, ActionFailed)
    assert unknown.error_type == "UnknownTool"
    doubt = decide.uncalled(APPROVED, decide.Plan("in_doubt", 1), NOW, switch=None, tool_known=True)
    assert isinstance(doubt, ActionFailed)
    assert doubt.in_doubt
    assert decide.uncalled(APPROVED, decide.Plan("call", 1), NOW, switch=None, tool_known=True) is None


@pytest.mark.parametrize(
    ("retryable", "unsent", "idempotent", "tries", "again"),
    [
        (True, False, True, 1, True),  # an idempotent tool, attempts left
        (True, False, True, 3, False),  # attempts spent
        (True, False, False, 1, False),  # may have acted, and is not idempotent
        (True, True, False, 1, True),  # certainly did not act (never sent, or a 429 / 503)
        (False, True, True, 1, False),  # a permanent failure
    ],
)
def test_a_failed_call_is_called_again_only_when_that_cannot_act_twice(
    retryable: bool, unsent: bool, idempotent: bool, tries: int, again: bool
) -> None:
    failure = decide.Failure("boom", "ToolError", retryable=retryable, in_doubt=False, unsent=unsent)
    assert decide.call_again(failure, idempotent=idempotent, tries=tries, max_attempts=3) is again


def test_a_call_given_up_in_doubt_says_whether_the_same_key_is_safe_to_repeat() -> None:
    timeout = decide.Failure("timed out", "Timeout", retryable=True, in_doubt=True, unsent=False)
    assert "same key is safe" in decide.gave_up(APPROVED, timeout, 3, NOW, idempotent=True).error
    assert "not called again" in decide.gave_up(APPROVED, timeout, 1, NOW, idempotent=False).error
    refused = decide.Failure("422 refused", "HttpError", retryable=False, in_doubt=False, unsent=False)
    plain = decide.gave_up(APPROVED, refused, 1, NOW, idempotent=False)
    assert (plain.error, plain.in_doubt) == ("422 refused", False)


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


async def _call(spec: Any, params: dict[str, Any], ctx: ToolContext, limit: int = 10_000) -> dict[str, Any]:
    return await call(spec, params, ctx, http=None, limits=Limits(max_result_bytes=limit))


def test_a_python_tool_runs_with_validated_parameters_and_result(ctx: ToolContext) -> None:
    spec = double.__charter_tool__  # type: ignore[attr-defined]
    assert asyncio.run(_call(spec, {"n": 21}, ctx)) == {"doubled": 42}
    with pytest.raises(ToolFailure, match="invalid parameters") as bad:
        asyncio.run(_call(spec, {"n": "x"}, ctx))
    assert not bad.value.retryable


def test_a_slow_tool_times_out_as_retryable_and_in_doubt(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="timed out") as err:
        asyncio.run(_call(slow.__charter_tool__, {"n": 1}, ctx))  # type: ignore[attr-defined]
    assert err.value.retryable
    assert err.value.in_doubt  # it may have acted before the deadline


def test_a_result_that_breaks_its_schema_fails(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="invalid result"):
        asyncio.run(_call(liar.__charter_tool__, {"n": 1}, ctx))  # type: ignore[attr-defined]


def test_a_result_over_the_size_limit_fails(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="exceeds"):
        asyncio.run(_call(double.__charter_tool__, {"n": 1}, ctx, limit=5))  # type: ignore[attr-defined]


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
