"""The planner's decisions, with no Kafka, database or clock of their own.

A trigger starts one run per matching agent; each run proposes its playbook's steps one at a
time, and moves on only when the previous step's result comes back. Run ids derive from the
trigger's id and the agent's, so the same trigger never starts the same agent twice.

A run that fails or is cancelled after steps that can be undone first compensates them, last
first (a saga): each compensation is an action like any other, proposed, governed, executed
and audited, numbered after the playbook's steps. A compensation that does not succeed
escalates the run to a human. So does an action whose effect is in doubt, and a tool whose
circuit is open: neither is a verdict on the work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from charter.agents import Agent
from charter.clock import derive_id
from charter.events import (
    Action,
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRejected,
    Event,
    KillSwitchSet,
    RunCancelled,
    RunCompleted,
    RunEscalated,
    RunFailed,
    RunStarted,
    ToolUnavailable,
    TriggerReceived,
    canonical_json,
)
from charter.templating import TemplateFailure, evaluate, render

log = logging.getLogger(__name__)

# Rejections that end a run as escalated to a human rather than failed.
ESCALATE = frozenset({"loop", "approval_expired"})
Status = Literal["running", "cancelling", "compensating", "completed", "failed", "cancelled", "escalated"]
Outcome = ActionExecuted | ActionFailed | ActionRejected | ToolUnavailable


@dataclass(frozen=True)
class Done:
    """A step that took effect, with what a compensation needs to undo it."""

    step_index: int
    resource: str
    parameters: dict[str, Any]
    result: dict[str, Any]


@dataclass(frozen=True)
class Ending:
    """How a compensating run ends once its compensations succeed."""

    kind: Literal["failed", "cancelled"]
    cause: str
    reason: str
    step: int | None = None
    switch_id: str | None = None


@dataclass(frozen=True)
class RunState:
    """Everything the planner keeps about a run. The agent is a snapshot taken when the run
    started, so editing an agent's file never changes a run already under way."""

    run_id: str
    agent: Agent
    trigger: TriggerReceived
    status: Status = "running"
    step_index: int = 0
    results: dict[str, Any] = field(default_factory=dict)
    done: tuple[Done, ...] = ()
    # While compensating: the steps still to undo, next first, and the steps undone so far.
    undo: tuple[int, ...] = ()
    undone: tuple[str, ...] = ()
    ending: Ending | None = None


@dataclass(frozen=True)
class Transition:
    state: RunState
    outputs: list[Event]


def run_id_for(trigger: TriggerReceived, agent: Agent) -> str:
    return derive_id(trigger.event_id, f"run:{agent.id}")


def matches(agent: Agent, trigger: TriggerReceived) -> bool:
    for rule in agent.triggers:
        if rule.event != trigger.name:
            continue
        if rule.when is None:
            return True
        try:
            if evaluate(rule.when, {"trigger": trigger.data}):
                return True
        except TemplateFailure as exc:
            log.warning(
                "agent %s: filter %r does not apply to %s: %s", agent.id, rule.when, trigger.event_id, exc
            )
    return False


def on_trigger(
    trigger: TriggerReceived, agents: Mapping[str, Agent], existing: Collection[str], now: datetime
) -> list[Transition]:
    """Start a run for every agent the trigger matches, unless that run already exists."""
    transitions = []
    for agent in sorted(agents.values(), key=lambda a: a.id):
        if not matches(agent, trigger):
            continue
        run_id = run_id_for(trigger, agent)
        if run_id in existing:
            continue
        state = RunState(run_id=run_id, agent=agent, trigger=trigger)
        started = RunStarted.caused_by(
            trigger,
            event_id=derive_id(run_id, "started"),
            now=now,
            agent=agent.id,
            run_id=run_id,
            agent_owner=agent.owner,
            trigger_event_id=trigger.event_id,
            trigger_name=trigger.name,
            environment=agent.environment,
            steps=len(agent.steps),
            triggered_by=trigger.submitted_by,
        )
        next_state, outputs = _propose(state, started, now)
        transitions.append(Transition(next_state, [started, *outputs]))
    return transitions


def on_outcome(outcome: Outcome, state: RunState | None, now: datetime) -> Transition | None:
    """Take a step's outcome; propose the next step, or end the run. None means nothing to do:
    the outcome is for a run already ended, or a step already past (a redelivery)."""
    if state is None or outcome.action.step_index != state.step_index:
        return None
    handler = _BY_STATUS.get(state.status)
    return handler(outcome, state, now) if handler else None


def _on_step(outcome: Outcome, state: RunState, now: datetime) -> Transition:
    """A running run's step outcome."""
    if isinstance(outcome, ActionExecuted):
        return _advance(outcome, state, now)
    if isinstance(outcome, ToolUnavailable):
        return _escalate(state, outcome, "tool_unavailable", outcome.reason, now)
    if isinstance(outcome, ActionFailed):
        if outcome.in_doubt:
            return _in_doubt(outcome, state, now)
        reason = f"{outcome.action.tool} failed: {outcome.error}"
        return _fail(state, outcome, "action_failed", reason, now)
    reasons = "; ".join(outcome.decision.reasons) or "no reason given"
    if outcome.decision.limit in ESCALATE:
        # A loop, or an approval nobody gave in time, is not a verdict on the work: a human
        # looks at it and decides what comes next.
        return _escalate(state, outcome, outcome.decision.limit or "", reasons, now)
    return _fail(state, outcome, "action_rejected", f"rejected by {outcome.rejected_by}: {reasons}", now)


def _advance(outcome: ActionExecuted, state: RunState, now: datetime) -> Transition:
    step = state.agent.steps[state.step_index]
    done = Done(state.step_index, outcome.action.resource, outcome.action.parameters, outcome.result)
    advanced = replace(
        state,
        step_index=state.step_index + 1,
        results={**state.results, step.id: outcome.result},
        done=(*state.done, done),
    )
    if advanced.step_index < len(state.agent.steps):
        return Transition(*_propose(advanced, outcome, now))
    completed = RunCompleted.caused_by(
        outcome,
        event_id=derive_id(state.run_id, "completed"),
        now=now,
        steps_completed=advanced.step_index,
        outputs=advanced.results,
    )
    return Transition(replace(advanced, status="completed"), [completed])


def _in_doubt(outcome: ActionFailed, state: RunState, now: datetime) -> Transition:
    # The evidence a human needs: which call, under which key, after how many attempts.
    evidence = (
        f"{outcome.action.tool} (idempotency key {outcome.idempotency_key}, "
        f"{outcome.attempts} attempt(s)): {outcome.error}"
    )
    return _escalate(state, outcome, "in_doubt", evidence, now)


def _on_cancelled_step(outcome: Outcome, state: RunState, now: datetime) -> Transition:
    """The outcome of the step that was under way when a kill switch cancelled the run."""
    ending = state.ending
    assert ending is not None
    if isinstance(outcome, ActionFailed) and outcome.in_doubt:
        return _in_doubt(outcome, state, now)
    if isinstance(outcome, ActionExecuted):
        done = Done(state.step_index, outcome.action.resource, outcome.action.parameters, outcome.result)
        state = replace(state, done=(*state.done, done))
    if _undoable(state):
        return _start_compensation(state, outcome, ending, now)
    return Transition(replace(state, status="cancelled"), [_end(state, outcome, ending, now)])


def _escalate(state: RunState, cause: Event, kind: str, reason: str, now: datetime) -> Transition:
    escalated = RunEscalated.caused_by(
        cause,
        event_id=derive_id(state.run_id, "escalated"),
        now=now,
        agent=state.agent.id,
        run_id=state.run_id,
        cause=kind,
        reason=reason,
        step=state.step_index,
    )
    return Transition(replace(state, status="escalated"), [escalated])


def affected(state: RunState, switch: KillSwitchSet) -> bool:
    """A running run the switch stops: its agent's, or one with the tool still ahead of it."""
    if state.status != "running":
        return False
    if switch.scope_agent is not None and switch.scope_agent != state.agent.id:
        return False
    ahead = {step.tool for step in state.agent.steps[state.step_index :]}
    return switch.scope_tool is None or switch.scope_tool in ahead


def on_kill_switch(switch: KillSwitchSet, runs: Collection[RunState], now: datetime) -> list[Transition]:
    """Cancel every run the switch stops; a switch turned off cancels nothing."""
    if not switch.active:
        return []
    transitions = []
    for state in sorted(runs, key=lambda s: s.run_id):
        if not affected(state, switch):
            continue
        ending = Ending("cancelled", "kill_switch", switch.reason, switch_id=switch.switch_id)
        in_flight = state.agent.steps[state.step_index]
        if in_flight.compensate is not None and switch.scope_tool not in (None, in_flight.tool):
            # The step under way can still take effect (the switch is on a later tool): wait for
            # its outcome, so that it is undone with the others if it does.
            transitions.append(Transition(replace(state, status="cancelling", ending=ending), []))
            continue
        if _undoable(state):
            transitions.append(_start_compensation(state, switch, ending, now, lineage=state.trigger))
            continue
        transitions.append(
            Transition(
                replace(state, status="cancelled"), [_end(state, switch, ending, now, lineage=state.trigger)]
            )
        )
    return transitions


def template_context(state: RunState) -> dict[str, Any]:
    trigger = state.trigger
    return {
        "trigger": trigger.data,
        "event": {"id": trigger.event_id, "name": trigger.name, "source": trigger.source},
        "steps": state.results,
        "run": {"id": state.run_id, "agent": state.agent.id},
    }


def _propose(state: RunState, cause: Event, now: datetime) -> tuple[RunState, list[Event]]:
    step = state.agent.steps[state.step_index]
    context = template_context(state)
    try:
        # The round trip through JSON rejects values a template produced that JSON cannot carry.
        parameters = json.loads(canonical_json(render(step.parameters, context)))
        resource = render(step.resource, context) if step.resource is not None else step.tool
    except (TemplateFailure, TypeError, ValueError) as exc:
        transition = _fail(state, cause, "plan_error", f"step {step.id}: {exc}", now)
        return transition.state, transition.outputs
    action = Action(
        action_id=derive_id(state.run_id, f"action:{state.step_index}"),
        step_index=state.step_index,
        step_id=step.id,
        tool=step.tool,
        resource=str(resource),
        parameters=parameters,
        environment=state.agent.environment,
    )
    proposed = ActionProposed.caused_by(
        cause,
        event_id=derive_id(state.run_id, f"proposed:{state.step_index}"),
        now=now,
        agent=state.agent.id,
        run_id=state.run_id,
        action=action,
        triggered_by=state.trigger.submitted_by,
    )
    return state, [proposed]


def _fail(state: RunState, cause: Event, kind: str, reason: str, now: datetime) -> Transition:
    ending = Ending("failed", kind, reason, step=state.step_index)
    if _undoable(state):
        return _start_compensation(state, cause, ending, now)
    return Transition(replace(state, status="failed"), [_end(state, cause, ending, now)])


def _end(state: RunState, cause: Event, ending: Ending, now: datetime, lineage: Event | None = None) -> Event:
    reason = ending.reason
    if state.undone:
        reason += f" (undone: {', '.join(state.undone)})"
    common: dict[str, Any] = {
        "now": now,
        "agent": state.agent.id,
        "run_id": state.run_id,
        "cause": ending.cause,
    }
    if ending.kind == "cancelled":
        return RunCancelled.caused_by(
            cause,
            lineage=lineage,
            event_id=derive_id(state.run_id, "cancelled"),
            reason=reason,
            switch_id=ending.switch_id,
            **common,
        )
    return RunFailed.caused_by(
        cause,
        lineage=lineage,
        event_id=derive_id(state.run_id, "failed"),
        reason=reason,
        failed_step=ending.step,
        **common,
    )


def _undoable(state: RunState) -> tuple[int, ...]:
    """The steps that took effect and have a compensation, last first."""
    steps = state.agent.steps
    return tuple(d.step_index for d in reversed(state.done) if steps[d.step_index].compensate is not None)


def _start_compensation(
    state: RunState, cause: Event, ending: Ending, now: datetime, lineage: Event | None = None
) -> Transition:
    compensating = replace(
        state, status="compensating", step_index=len(state.agent.steps), undo=_undoable(state), ending=ending
    )
    return _propose_compensation(compensating, cause, now, lineage)


def _propose_compensation(
    state: RunState, cause: Event, now: datetime, lineage: Event | None = None
) -> Transition:
    target = next(d for d in state.done if d.step_index == state.undo[0])
    step = state.agent.steps[target.step_index]
    assert step.compensate is not None
    context = {**template_context(state), "params": target.parameters, "result": target.result}
    try:
        parameters = json.loads(canonical_json(render(step.compensate.parameters, context)))
        resource = target.resource
        if step.compensate.resource is not None:
            resource = str(render(step.compensate.resource, context))
    except (TemplateFailure, TypeError, ValueError) as exc:
        return _escalate(state, cause, "compensation_failed", f"cannot undo step {step.id}: {exc}", now)
    action = Action(
        action_id=derive_id(state.run_id, f"action:{state.step_index}"),
        step_index=state.step_index,
        step_id=f"undo-{step.id}",
        tool=step.compensate.tool,
        resource=resource,
        parameters=parameters,
        environment=state.agent.environment,
        compensates=step.id,
    )
    proposed = ActionProposed.caused_by(
        cause,
        lineage=lineage,
        event_id=derive_id(state.run_id, f"proposed:{state.step_index}"),
        now=now,
        agent=state.agent.id,
        run_id=state.run_id,
        action=action,
        triggered_by=state.trigger.submitted_by,
    )
    return Transition(state, [proposed])


def _on_compensation(outcome: Outcome, state: RunState, now: datetime) -> Transition:
    assert state.ending is not None
    step = state.agent.steps[state.undo[0]]
    if not isinstance(outcome, ActionExecuted):
        why = describe_failure(outcome)
        reason = f"{state.ending.reason}; undoing step {step.id} did not succeed: {why}"
        return _escalate(state, outcome, "compensation_failed", reason, now)
    advanced = replace(
        state, step_index=state.step_index + 1, undo=state.undo[1:], undone=(*state.undone, step.id)
    )
    if advanced.undo:
        return _propose_compensation(advanced, outcome, now)
    status: Status = state.ending.kind
    return Transition(replace(advanced, status=status), [_end(advanced, outcome, state.ending, now)])


def describe_failure(outcome: ActionFailed | ActionRejected | ToolUnavailable) -> str:
    if isinstance(outcome, ActionFailed):
        return outcome.error
    if isinstance(outcome, ToolUnavailable):
        return outcome.reason
    return f"rejected by {outcome.rejected_by}: {'; '.join(outcome.decision.reasons)}"


_BY_STATUS = {"running": _on_step, "cancelling": _on_cancelled_step, "compensating": _on_compensation}
