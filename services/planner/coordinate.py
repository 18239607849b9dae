"""Runs that work with other runs and with the world: handoffs and waits, without I/O.

A run hands work to another agent with `RunHandedOff`: the new run's id derives from that
event's id and the agent's, so a handoff redelivered never starts it twice, and it keeps the
chain's correlation id. Each handoff is one deeper than the run that made it; past the agent's
`max_handoff_depth` (3 unless its limits say) the handoff is refused, so agents handing work
round in a circle stop. A run that waits for a business event keeps only its state; the
event that arrives is its cause, within the run's correlation.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from charter.events import Event, RunHandedOff, TriggerReceived, WaitExpired, canonical_json
from charter.limits import DEFAULT_MAX_HANDOFF_DEPTH
from services.planner.run import RunState, run_of


def too_deep(state: RunState) -> str | None:
    """Why the run may not hand off, if it may not."""
    limit = state.agent.limits.max_handoff_depth
    limit = DEFAULT_MAX_HANDOFF_DEPTH if limit is None else limit
    if state.depth + 1 > limit:
        return f"max_handoff_depth: this run is {state.depth} handoff(s) deep (limit {limit})"
    return None


def hand_off(
    state: RunState,
    cause: Event,
    to_agent: str,
    context: dict[str, Any],
    *,
    label: str,
    now: datetime,
    task: str = "",
) -> RunHandedOff:
    return RunHandedOff.caused_by(
        cause,
        event_id=state.ids(label),
        now=now,
        agent=state.agent.id,
        run_id=state.run_id,
        to_agent=to_agent,
        # The round trip through JSON rejects values a template produced that JSON cannot carry.
        context=json.loads(canonical_json(context)),
        depth=state.depth + 1,
        task=task,
        triggered_by=state.trigger.submitted_by,
    )


def handed_result(handed: RunHandedOff) -> dict[str, Any]:
    """What the handing run records as the handoff's result."""
    return {"handed_off_to": handed.to_agent, "run_id": run_of(handed.event_id, handed.to_agent)}


def trigger_of(handed: RunHandedOff) -> TriggerReceived:
    """The business event the new run starts from: the handoff's context, in its lineage."""
    env = handed.envelope
    return TriggerReceived.create(
        event_id=handed.event_id,
        now=env.occurred_at,
        tenant=env.tenant,
        correlation_id=env.correlation_id,
        causation_id=env.causation_id,
        name=f"handoff:{env.agent}",
        data=handed.context,
        source=f"agent:{env.agent}",
        submitted_by=handed.triggered_by,
    )


def within(signal: TriggerReceived, state: RunState) -> TriggerReceived:
    """The awaited event as the run's outputs name it: their cause, in the run's correlation."""
    env = signal.envelope.model_copy(
        update={
            "correlation_id": state.trigger.envelope.correlation_id,
            "tenant": state.trigger.envelope.tenant,
        }
    )
    return signal.model_copy(update={"envelope": env})


def awaited(state: RunState, signal: TriggerReceived) -> bool:
    """The run waits for this event: its name, and the run's key in the awaited field."""
    if state.status != "waiting" or state.step_index >= len(state.agent.steps):
        return False
    wait = state.agent.steps[state.step_index].wait
    return (
        wait is not None
        and wait.event == signal.name
        and wait.field in signal.data
        and str(signal.data[wait.field]) == state.wait_key
    )


def expired(state: RunState, now: datetime) -> WaitExpired:
    """What the planner's timer publishes when a wait has run out."""
    wait = state.agent.steps[state.step_index].wait
    assert wait is not None
    return WaitExpired.create(
        event_id=state.ids(f"expired:{state.step_index}"),
        now=now,
        tenant=state.trigger.envelope.tenant,
        agent=state.agent.id,
        run_id=state.run_id,
        correlation_id=state.trigger.envelope.correlation_id,
        causation_id=state.ids(f"waiting:{state.step_index}"),
        step=state.step_index,
        event_name=wait.event,
        key=state.wait_key or "",
    )
