"""The executor in process, on its real SQLite store: retries with backoff for transient errors
only, the circuit breaker, calls in doubt, dry runs and secrets."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from charter import serde, signing
from charter.breaker import Breakers
from charter.clock import SystemClock
from charter.config import Settings
from charter.events import ActionApproved, ActionExecuted, ActionFailed, Event, ToolUnavailable
from charter.killswitch import ControlFollower
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Pipeline, settle
from charter.secrets import REDACTED, Secrets, guard_logs
from charter.store import make_engine
from charter.tools import ToolContext, ToolError, tool
from charter.tools import load as load_tools
from services.executor import store as executions
from services.executor.service import Executor
from tests.factories import one_of_each
from tests.unit.test_pipeline import Recorder

CANARY = "canary-9f3e2d1c7b"
APPROVED = next(e for e in one_of_each() if isinstance(e, ActionApproved))
NO_DELIVERY = Delivery("", 0, 0, None, b"", (), 0)
calls: dict[str, int] = {}


class N(BaseModel):
    n: int


class Out(BaseModel):
    n: int
    note: str = ""


def _count(name: str) -> int:
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


@tool(idempotent=True, max_attempts=3)
def flaky(params: N, ctx: ToolContext) -> Out:
    if _count("flaky") < 3:
        raise ToolError("busy, try later", retryable=True)
    return Out(n=params.n)


@tool(idempotent=True, max_attempts=1)
def down(params: N, ctx: ToolContext) -> Out:
    _count("down")
    if calls.get("down_healed"):
        return Out(n=params.n)
    raise ToolError("service unavailable", retryable=True)


@tool(idempotent=False, timeout_s=0.05)
async def hangs(params: N, ctx: ToolContext) -> Out:
    _count("hangs")
    await asyncio.sleep(1)
    return Out(n=0)


@tool(idempotent=True, timeout_s=0.05, max_attempts=2)
async def stalls(params: N, ctx: ToolContext) -> Out:
    _count("stalls")
    await asyncio.sleep(1)
    return Out(n=0)


@tool(idempotent=True)
async def slow(params: N, ctx: ToolContext) -> Out:
    _count("slow")
    await asyncio.sleep(0.3)
    return Out(n=params.n)


@tool(idempotent=True)
def refuses(params: N, ctx: ToolContext) -> Out:
    _count("refuses")
    raise ToolError("no such account")  # the caller's problem: not retried


def _preview(params: N, ctx: ToolContext) -> Out:
    return Out(n=params.n, note="would have written")


@tool(idempotent=True, dry_run=_preview)
def writes(params: N, ctx: ToolContext) -> Out:
    _count("writes")
    return Out(n=params.n, note="written")


@tool(idempotent=True, secrets=["SHOP_KEY"])
def leaky(params: N, ctx: ToolContext) -> Out:
    logging.getLogger("leaky").warning("calling the shop with %s", ctx.secret("SHOP_KEY"))
    return Out(n=params.n, note=f"key={ctx.secret('SHOP_KEY')}")


# Calls of `bounded` under way now, and the most there ever were; its gate lets them answer.
bounded_calls = {"now": 0, "most": 0}
gates: dict[str, asyncio.Event] = {}


@tool(idempotent=True, max_concurrency=2)
async def bounded(params: N, ctx: ToolContext) -> Out:
    bounded_calls["now"] += 1
    bounded_calls["most"] = max(bounded_calls["most"], bounded_calls["now"])
    if bounded_calls["now"] == 2:
        gates["full"].set()
    await gates["bounded"].wait()
    bounded_calls["now"] -= 1
    return Out(n=params.n)


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


class _NoSwitches:
    switches: tuple[Any, ...] = ()


def _executor(tmp_path: Path, **settings: Any) -> Executor:
    config = Settings(home=tmp_path, **settings)
    signing.ensure_keys(config.keys)
    engine = make_engine(config.database_url_for("executor"))
    executions.create(engine)
    registry = load_tools([__name__])
    secrets = Secrets({"SHOP_KEY": CANARY})
    return Executor(config, engine, registry, SystemClock(), cast(ControlFollower, _NoSwitches()), secrets)


def _approved(tmp_path: Path, tool_name: str, run: str, environment: str = "production") -> ActionApproved:
    action = APPROVED.action.model_copy(
        update={"tool": tool_name, "parameters": {"n": 7}, "environment": environment}
    )
    event = APPROVED.model_copy(
        update={"action": action, "envelope": APPROVED.envelope.model_copy(update={"run_id": run})}
    )
    return signing.Signer.load(tmp_path / "keys", "policy").sign(event)


def _handle(executor: Executor, event: ActionApproved) -> Event:
    [outcome] = asyncio.run(settle(executor.handle(event, NO_DELIVERY)))
    return outcome


def test_a_transient_failure_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    outcome = _handle(_executor(tmp_path), _approved(tmp_path, "flaky", "r1"))
    assert isinstance(outcome, ActionExecuted)
    assert outcome.attempts == 3
    assert calls["flaky"] == 3


def test_a_permanent_failure_is_not_retried(tmp_path: Path) -> None:
    outcome = _handle(_executor(tmp_path), _approved(tmp_path, "refuses", "r1"))
    assert isinstance(outcome, ActionFailed)
    assert outcome.error == "no such account"
    assert calls["refuses"] == 1


def test_a_non_idempotent_call_that_timed_out_is_in_doubt_and_never_repeated(tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    event = _approved(tmp_path, "hangs", "r1")
    outcome = _handle(executor, event)
    assert isinstance(outcome, ActionFailed)
    assert outcome.in_doubt
    assert "in doubt" in outcome.error
    assert calls["hangs"] == 1
    assert _handle(executor, event) == outcome  # redelivered: the recorded outcome, no new call
    assert calls["hangs"] == 1


def test_the_breaker_opens_refuses_then_lets_one_probe_through(tmp_path: Path) -> None:
    executor = _executor(tmp_path, breaker_failures=2, breaker_cooldown_s=0.3)
    for run in ("r1", "r2"):
        assert isinstance(_handle(executor, _approved(tmp_path, "down", run)), ActionFailed)
    refused = _handle(executor, _approved(tmp_path, "down", "r3"))
    assert isinstance(refused, ToolUnavailable)
    assert refused.failures == 2
    assert 0 < refused.retry_after_s <= 0.3
    assert calls["down"] == 2  # the open circuit did not call it
    asyncio.run(asyncio.sleep(0.35))
    calls["down_healed"] = 1
    probe = _handle(executor, _approved(tmp_path, "down", "r4"))
    assert isinstance(probe, ActionExecuted)  # half-open: one probe, and it closed the circuit
    assert isinstance(_handle(executor, _approved(tmp_path, "down", "r5")), ActionExecuted)


def test_a_probe_that_ends_without_a_verdict_gives_its_slot_back(tmp_path: Path) -> None:
    executor = _executor(tmp_path, breaker_failures=1, breaker_cooldown_s=0.1)
    assert isinstance(_handle(executor, _approved(tmp_path, "down", "r1")), ActionFailed)
    asyncio.run(asyncio.sleep(0.15))
    secrets, executor._secrets = executor._secrets, Secrets({})
    # leaky's secret is missing: no call, no verdict on the tool (it is not "down" at all)
    assert isinstance(_handle(executor, _approved(tmp_path, "leaky", "r2")), ActionFailed)
    executor._secrets = secrets
    calls["down_healed"] = 1
    assert isinstance(_handle(executor, _approved(tmp_path, "down", "r3")), ActionExecuted)


def test_an_idempotent_call_left_in_doubt_escalates_too(tmp_path: Path) -> None:
    outcome = _handle(_executor(tmp_path), _approved(tmp_path, "stalls", "r1"))
    assert isinstance(outcome, ActionFailed)
    assert outcome.in_doubt  # it may have acted; the planner escalates rather than undo around it
    assert "same key is safe" in outcome.error
    assert calls["stalls"] == 2  # its attempts, each with the same key


def test_two_replicas_handed_the_same_action_call_the_tool_once(tmp_path: Path) -> None:
    first = _executor(tmp_path, instance="replica-a")
    second = _executor(tmp_path, instance="replica-b")  # the same store, as replicas share it
    event = _approved(tmp_path, "slow", "r1")

    async def both() -> list[Event]:
        outcomes = await asyncio.gather(
            settle(first.handle(event, NO_DELIVERY)), settle(second.handle(event, NO_DELIVERY))
        )
        return [o for found in outcomes for o in found]

    a, b = asyncio.run(both())
    assert calls["slow"] == 1  # the second waited for the first's claim, then re-emitted its outcome
    assert a == b
    assert isinstance(a, ActionExecuted)


def test_a_failed_probe_opens_the_circuit_again() -> None:
    breakers = Breakers(failures=3, cooldown_s=10)
    for _ in range(3):
        breakers.failed("t", now=0)
    assert breakers.state("t", now=5) == "open"
    assert breakers.admit("t", now=11) is None  # the probe
    assert breakers.admit("t", now=11.5) is not None  # only one at a time
    breakers.failed("t", now=12)
    assert breakers.state("t", now=21) == "open"
    assert breakers.state("t", now=22.1) == "half_open"


def test_a_dry_run_environment_runs_the_dry_run_path_and_says_so(tmp_path: Path) -> None:
    executor = _executor(tmp_path, dry_run_environments="staging, sandbox")
    outcome = _handle(executor, _approved(tmp_path, "writes", "r1", environment="staging"))
    assert isinstance(outcome, ActionExecuted)
    assert outcome.dry_run
    assert outcome.result == {"n": 7, "note": "would have written"}
    assert "writes" not in calls
    real = _handle(executor, _approved(tmp_path, "writes", "r2", environment="production"))
    assert isinstance(real, ActionExecuted)
    assert not real.dry_run
    assert calls["writes"] == 1


def test_a_tool_without_a_dry_run_path_is_not_called_in_a_dry_run(tmp_path: Path) -> None:
    executor = _executor(tmp_path, dry_run_environments="staging")
    outcome = _handle(executor, _approved(tmp_path, "refuses", "r1", environment="staging"))
    assert isinstance(outcome, ActionFailed)
    assert outcome.error_type == "NoDryRun"
    assert "refuses" not in calls


def test_secrets_are_redacted_from_results_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard_logs(Secrets({"SHOP_KEY": CANARY}))  # as the service wires it: every root handler
    outcome = _handle(_executor(tmp_path), _approved(tmp_path, "leaky", "r1"))
    assert isinstance(outcome, ActionExecuted)
    assert outcome.result["note"] == f"key={REDACTED}"
    assert CANARY not in caplog.text
    assert REDACTED in caplog.text


def test_a_missing_secret_fails_the_action_by_name(tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    executor._secrets = Secrets({})
    outcome = _handle(executor, _approved(tmp_path, "leaky", "r1"))
    assert isinstance(outcome, ActionFailed)
    assert outcome.error == "secret(s) not configured: SHOP_KEY"


def test_secrets_load_from_the_environment_and_a_file(tmp_path: Path) -> None:
    (tmp_path / "secrets.yaml").write_text("A_KEY: from-the-file\nB_KEY: also-file\n")
    loaded = Secrets.load(tmp_path / "secrets.yaml", {"CHARTER_SECRET_B_KEY": "from-env", "OTHER": "x"})
    assert loaded.resolve(["A_KEY", "B_KEY"]) == {"A_KEY": "from-the-file", "B_KEY": "from-env"}
    assert loaded.redact({"x": ["from-env!", "ok"]}) == {"x": [f"{REDACTED}!", "ok"]}


def _batch(executor: Executor, *events: ActionApproved) -> list[Event]:
    """One batch through the executor's batch path, as its consumer hands it over."""
    sent = Recorder()
    pipeline = Pipeline("executor", sent, executor.handle, SystemClock())  # type: ignore[arg-type]
    deliveries = [
        Delivery("charter.actions.approved", 0, i, b"k", serde.encode(e), (), 0) for i, e in enumerate(events)
    ]

    async def go() -> None:
        await pipeline.publish(await executor.handle_batch(pipeline, deliveries))

    asyncio.run(go())
    return sent.sent


def _stored(executor: Executor) -> dict[str, tuple[str, int]]:
    with executor._engine.connect() as conn:
        rows = conn.execute(
            select(
                executions.executions.c.idempotency_key,
                executions.executions.c.status,
                executions.executions.c.attempts,
            )
        )
        return {key: (status, attempts) for key, status, attempts in rows}


def test_a_batch_calls_each_action_once_and_records_every_outcome(tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    events = [_approved(tmp_path, "writes", f"r{n}") for n in range(4)]
    # The same approval twice in one batch (a redelivery): one call, one outcome sent twice.
    sent = _batch(executor, *events, events[0])
    assert calls["writes"] == 4
    assert all(isinstance(e, ActionExecuted) for e in sent)
    assert sent[-1] == sent[0]
    assert set(_stored(executor).values()) == {("completed", 1)}
    assert len(_stored(executor)) == 4
    # Redelivered whole: the recorded outcomes, byte for byte, and no call.
    again = _batch(executor, *events)
    assert [serde.encode(e) for e in again] == [serde.encode(e) for e in sent[:4]]
    assert calls["writes"] == 4


def test_a_batch_retrying_a_record_sees_its_call_started_and_does_not_repeat_it(tmp_path: Path) -> None:
    """A record whose handling fails after its call began is handled again by the pipeline: what
    the batch read at its start is stale by then, and must not let a non-idempotent tool run twice."""
    executor = _executor(tmp_path)
    event = _approved(tmp_path, "hangs", "r1")
    real_call = executor._call
    failures = iter([RuntimeError("the process lost its footing mid-call")])

    async def call_then_fail(*args: Any) -> Any:
        await real_call(*args)
        raise next(failures, None) or AssertionError("called a second time")

    executor._call = call_then_fail  # type: ignore[method-assign,assignment]
    [outcome] = _batch(executor, event)
    assert calls["hangs"] == 1
    assert isinstance(outcome, ActionFailed)
    assert outcome.in_doubt  # started, never finished: in doubt, not called again
    assert _stored(executor) == {f"{event.run_id}:{event.action.step_index}": ("completed", 1)}


def test_a_key_another_replica_completed_since_the_batch_began_is_not_called_again(tmp_path: Path) -> None:
    """The batch reads its keys when it begins; a rebalance can hand one to another replica that
    completes it meanwhile. What the batch read must not make this replica call it again."""
    a = _executor(tmp_path, instance="replica-a")
    b = _executor(tmp_path, instance="replica-b")
    first, key = _approved(tmp_path, "writes", "r1"), _approved(tmp_path, "writes", "r2")
    real_call = a._call

    async def call_then_b_takes_the_key(*args: Any) -> Any:
        outcome = await real_call(*args)
        if args[1].envelope.run_id == "r1":
            await settle(b.handle(key, NO_DELIVERY))  # b completes r2 while a's batch is under way
        return outcome

    a._call = call_then_b_takes_the_key  # type: ignore[method-assign,assignment]
    _, replayed = _batch(a, first, key)
    assert calls["writes"] == 2  # r1 by a, r2 by b: never r2 twice
    [by_b] = asyncio.run(settle(b.handle(key, NO_DELIVERY)))
    assert replayed == by_b  # a sends what b recorded


def test_outcomes_are_written_before_waiting_on_a_key_another_replica_holds(tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    done, held = _approved(tmp_path, "writes", "r1"), _approved(tmp_path, "slow", "r2")
    now = datetime.now(UTC)
    with executor._engine.begin() as conn:  # another replica's claim on r2, lapsing in 0.6 s
        executions.claim(conn, f"r2:{held.action.step_index}", "replica-b", now, now + timedelta(seconds=0.6))
    pipeline = Pipeline("executor", Recorder(), executor.handle, SystemClock())  # type: ignore[arg-type]
    deliveries = [
        Delivery("charter.actions.approved", 0, i, b"k", serde.encode(e), (), 0)
        for i, e in enumerate((done, held))
    ]

    async def meanwhile() -> dict[str, tuple[str, int]]:
        batch = asyncio.create_task(executor.handle_batch(pipeline, deliveries))
        await asyncio.sleep(0.3)  # r2 is held by the other replica until 0.6 s
        stored = _stored(executor)
        await batch
        return stored

    stored = asyncio.run(meanwhile())
    # r1's outcome is durable while r2 waits, not only once the wait is over.
    assert stored == {f"r1:{done.action.step_index}": ("completed", 1)}
    assert calls == {"writes": 1, "slow": 1}


def test_a_tool_is_called_no_more_often_at_once_than_it_declares_and_the_rest_wait(tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    events = [_approved(tmp_path, "bounded", f"r{n}") for n in range(5)]

    async def go() -> list[Event]:
        bounded_calls.update(now=0, most=0)
        gates["bounded"] = release = asyncio.Event()
        gates["full"] = full = asyncio.Event()
        calls = [asyncio.ensure_future(settle(executor.handle(e, NO_DELIVERY))) for e in events]
        await full.wait()  # two calls are in: the tool's bound
        for _ in range(100):  # every other call has had its chance to go in, and waits instead
            await asyncio.sleep(0)
        assert bounded_calls["now"] == 2
        release.set()
        return [o for found in await asyncio.gather(*calls) for o in found]

    outcomes = asyncio.run(go())
    assert all(isinstance(o, ActionExecuted) for o in outcomes)
    assert bounded_calls["most"] == 2
