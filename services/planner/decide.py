"""The planner's decisions, with no Kafka, database or clock of their own.

A trigger starts one run per matching agent; each run proposes its playbook's steps one at a
time, and moves on only when the previous step's result comes back. Run ids derive from the
trigger's id and the agent's, so the same trigger never starts the same agent twice.
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
    TriggerReceived,
    canonical_json,
)
from charter.templating import TemplateFailure, evaluate, render

log = logging.getLogger(__name__)

# Rejections that end a run as escalated to a human rather than failed.
ESCALATE = frozenset({"loop", "approval_expired"})
Status = Literal["running", "completed", "failed", "cancelled", "escalated"]
Outcome = ActionExecuted | ActionFailed | ActionRejected


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
    if state is None or state.status != "running" or outcome.action.step_index != state.step_index:
        return None
    step = state.agent.steps[state.step_index]
    if isinstance(outcome, ActionExecuted):
        advanced = replace(
            state, step_index=state.step_index + 1, results={**state.results, step.id: outcome.result}
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
    if isinstance(outcome, ActionFailed):
        reason = f"{outcome.action.tool} failed: {outcome.error}"
        return _fail(state, outcome, "action_failed", reason, now)
    reasons = "; ".join(outcome.decision.reasons) or "no reason given"
    if outcome.decision.limit in ESCALATE:
        # A loop, or an approval nobody gave in time, is not a verdict on the work: a human
        # looks at it and decides what comes next.
        escalated = RunEscalated.caused_by(
            outcome,
            event_id=derive_id(state.run_id, "escalated"),
            now=now,
            cause=outcome.decision.limit,
            reason=reasons,
            step=state.step_index,
        )
        return Transition(replace(state, status="escalated"), [escalated])
    return _fail(state, outcome, "action_rejected", f"rejected by {outcome.rejected_by}: {reasons}", now)


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
        cancelled = RunCancelled.caused_by(
            switch,
            lineage=state.trigger,
            event_id=derive_id(state.run_id, "cancelled"),
            now=now,
            agent=state.agent.id,
            run_id=state.run_id,
            cause="kill_switch",
            reason=switch.reason,
            switch_id=switch.switch_id,
        )
        transitions.append(Transition(replace(state, status="cancelled"), [cancelled]))
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
    failed = RunFailed.caused_by(
        cause,
        event_id=derive_id(state.run_id, "failed"),
        now=now,
        agent=state.agent.id,
        run_id=state.run_id,
        cause=kind,
        reason=reason,
        failed_step=state.step_index,
    )
    return Transition(replace(state, status="failed"), [failed])
