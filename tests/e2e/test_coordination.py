"""Agents working together, and runs that wait for the world, through the real services.

handoff-tester hands an order to settle-waiter, which waits for the order's `test.settled`
event, verifies the order, and tells the customer if the payment settled. quick-waiter does the
same but waits 3 s at most, for the tests of a wait that runs out.
relay-tester hands work to itself until its handoff depth limit (2) stops the chain.
"""

from __future__ import annotations

import asyncio

from charter.client import Client
from charter.events import (
    ActionExecuted,
    Event,
    RunCompleted,
    RunEscalated,
    RunHandedOff,
    RunStarted,
    RunWaiting,
    WaitExpired,
)
from tests.e2e.conftest import Stack, run_events, run_id, wait_for, wait_run_end


def _handed(stack: Stack, run: str) -> RunHandedOff:
    handed = wait_for(stack, lambda e: isinstance(e, RunHandedOff) and e.run_id == run, "triggers")
    assert isinstance(handed, RunHandedOff)
    return handed


def _tools(events: list[Event]) -> list[str]:
    return [e.action.tool for e in events if isinstance(e, ActionExecuted)]


TOPICS = ("runs", "triggers", "actions.proposed", "actions.approved", "actions.rejected", "actions.results")


def _traces(stack: Stack, *runs: str) -> dict[str | None, list[str]]:
    """The trace ids the runs' events carry, with the events that carry each."""

    async def read() -> dict[str | None, list[str]]:
        found: dict[str | None, list[str]] = {}
        async with Client(stack.settings) as client:
            for topic in TOPICS:
                for run in runs:
                    async for received in client.replay(topic, run_id=run):
                        if received.event is not None:
                            found.setdefault(received.trace_id, []).append(received.event.envelope.event_type)
        return found

    return asyncio.run(read())


def test_a_handoff_starts_the_other_agents_run_which_waits_for_its_event(stack: Stack) -> None:
    trigger = stack.publish("test.handoff", {"order_id": "H-100"})
    first = run_id(trigger, "handoff-tester")
    handed = _handed(stack, first)
    assert handed.to_agent == "settle-waiter"
    assert handed.depth == 1
    done = wait_run_end(stack, first)
    assert isinstance(done, RunCompleted)
    second = run_id(handed.event_id, "settle-waiter")
    assert done.outputs["hand"] == {"handed_off_to": "settle-waiter", "run_id": second}

    waiting = wait_for(stack, lambda e: isinstance(e, RunWaiting) and e.run_id == second, "runs")
    assert isinstance(waiting, RunWaiting)
    assert (waiting.event_name, waiting.key) == ("test.settled", "H-100")
    # Same correlation as the business event that began the chain.
    assert waiting.envelope.correlation_id == trigger
    stack.publish("test.settled", {"order_id": "H-999", "amount": 1})  # someone else's
    stack.publish("test.settled", {"order_id": "H-100", "amount": 42})
    end = wait_run_end(stack, second)
    assert isinstance(end, RunCompleted), end
    assert end.outputs["settled"] == {"order_id": "H-100", "amount": 42}
    events = run_events(stack, second, "actions.results")
    assert _tools(events) == ["lookup_order", "notify_customer"]
    assert end.envelope.correlation_id == trigger
    # Both runs are one trace, the trigger's: across the handoff, the wait, and the business
    # event (with a trace of its own) that ended the wait.
    traces = _traces(stack, first, second)
    assert len(traces) == 1, traces
    [(trace_id, kinds)] = traces.items()
    assert trace_id is not None
    assert {"RunStarted", "RunHandedOff", "RunWaiting", "ActionExecuted", "RunCompleted"} <= set(kinds)


def test_an_event_that_came_before_the_wait_counts(stack: Stack) -> None:
    stack.publish("test.settled", {"order_id": "H-101", "amount": 7})
    trigger = stack.publish("test.handoff", {"order_id": "H-101"})
    second = run_id(_handed(stack, run_id(trigger, "handoff-tester")).event_id, "settle-waiter")
    end = wait_run_end(stack, second)
    assert isinstance(end, RunCompleted), end
    assert end.outputs["settled"]["amount"] == 7


def test_a_wait_that_runs_out_goes_on_as_its_step_says(stack: Stack) -> None:
    trigger = stack.publish("test.handoff", {"order_id": "H-102", "quick": True})
    second = run_id(_handed(stack, run_id(trigger, "handoff-tester")).event_id, "quick-waiter")
    end = wait_run_end(stack, second, timeout=30)
    assert isinstance(end, RunCompleted), end
    assert end.outputs["settled"] == {"timed_out": True}
    [waiting] = [e for e in run_events(stack, second, "runs") if isinstance(e, RunWaiting)]
    assert (end.envelope.occurred_at - waiting.envelope.occurred_at).total_seconds() >= 2  # it waited
    events = run_events(stack, second, "triggers", "actions.results")
    assert [e.key for e in events if isinstance(e, WaitExpired)] == ["H-102"]
    assert _tools(events) == ["lookup_order"]  # the notification's condition did not hold
    # The planner's timer ended the wait, in the run's trace.
    first = run_id(trigger, "handoff-tester")
    traces = _traces(stack, first, second)
    assert len(traces) == 1, traces
    assert {"RunWaiting", "WaitExpired", "RunCompleted"} <= set(next(iter(traces.values())))


def test_a_handoff_received_twice_starts_one_run(stack: Stack) -> None:
    trigger = stack.publish("test.handoff", {"order_id": "H-103"})
    handed = _handed(stack, run_id(trigger, "handoff-tester"))
    second = run_id(handed.event_id, "settle-waiter")

    async def again() -> None:
        async with Client(stack.settings) as client:
            await client.send(handed)

    asyncio.run(again())
    stack.publish("test.settled", {"order_id": "H-103", "amount": 3})
    assert isinstance(wait_run_end(stack, second), RunCompleted)
    # The planner answers a record it has seen with the outputs it recorded (the same ids).
    started = {e.event_id for e in run_events(stack, second, "runs") if isinstance(e, RunStarted)}
    assert len(started) == 1


def test_a_chain_of_handoffs_stops_at_its_depth_limit(stack: Stack) -> None:
    trigger = stack.publish("test.relay", {"n": 1})
    runs = [run_id(trigger, "relay-tester")]
    for depth in (1, 2):
        handed = _handed(stack, runs[-1])
        assert handed.depth == depth
        assert isinstance(wait_run_end(stack, runs[-1]), RunCompleted)
        runs.append(run_id(handed.event_id, "relay-tester"))
    last = wait_run_end(stack, runs[-1])
    assert isinstance(last, RunEscalated), last
    assert last.cause == "max_handoff_depth"
    assert "2 handoff(s) deep (limit 2)" in last.reason
