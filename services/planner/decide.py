"""The planner's decisions, with no Kafka, database or clock of their own.

A trigger starts one run per matching agent; each run proposes its playbook's steps one at a
time, and moves on only when the previous step's result comes back. A step may be skipped by
its condition (`when`), and a verification step (`expect`) fails the run when the result it
checks does not hold. Run ids derive from the trigger's id and the agent's, so the same
trigger never starts the same agent twice. A model-planned agent's runs are decided in
reason.py instead, through the same entry points.

A run that fails or is cancelled after steps that can be undone first compensates them, last
first (a saga): each compensation is an action like any other, proposed, governed, executed
and audited, numbered after the playbook's steps. A compensation that does not succeed
escalates the run to a human. So does an action whose effect is in doubt, and a tool whose
circuit is open: neither is a verdict on the work. A human resumes an escalated run (its step
is proposed again, under new ids) or cancels it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from charter import subjects, triggering
from charter.agents import Agent, Step
from charter.clock import derive_id
from charter.errors import InvalidEvent
from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionRejected,
    Event,
    KillSwitchSet,
    RunCompleted,
    RunHandedOff,
    RunInstructed,
    RunStarted,
    RunWaiting,
    ToolUnavailable,
    TriggerReceived,
    WaitExpired,
    canonical_json,
)
from charter.templating import TemplateFailure, evaluate, render
from services.planner import coordinate, reason
from services.planner.run import (
    LIVE,
    Call,
    Done,
    Ending,
    RunState,
    Status,
    Transition,
    end,
    escalate,
    propose,
    run_of,
)

__all__ = ["Done", "Ending", "RunState", "Status", "Transition"]

log = logging.getLogger(__name__)

# Rejections that end a run as escalated to a human rather than failed.
ESCALATE = frozenset({"loop", "approval_expired"})
Outcome = ActionExecuted | ActionFailed | ActionRejected | ToolUnavailable


def run_id_for(trigger: TriggerReceived, agent: Agent) -> str:
    return run_of(trigger.event_id, agent.id)


def on_trigger(
    trigger: TriggerReceived,
    agents: Mapping[str, Agent],
    existing: Collection[str],
    now: datetime,
    *,
    proven: bool = True,
    subject_fields: Sequence[str] = (),
) -> list[Transition]:
    """Start a run for every agent the trigger matches, unless that run already exists.

    `proven`: the submitter the trigger names was authenticated (the API signed it). One that
    was not is only claimed: the run records the claim to show, and no submitter for
    separation of duties to rely on. `subject_fields`: the payload fields that name the run's
    data subject (CHARTER_SUBJECT_FIELDS).

    A trigger that some agent's filter cannot be evaluated against starts nothing and is
    refused whole (the pipeline dead-letters it with the reason), even where another agent's
    filter holds: half its runs started and the rest dropped would look like success. Once
    the data or the filter is fixed, replaying the dead letter starts them all."""
    found = triggering.matched(agents, trigger.name, trigger.data)
    if found.unevaluable:
        raise InvalidEvent(triggering.describe(found.unevaluable))
    claimed = None if proven else trigger.submitted_by
    if claimed is not None:
        trigger = trigger.model_copy(update={"submitted_by": None})
    return [
        start_run(trigger, agent, now, claimed=claimed, subject_fields=subject_fields)
        for agent in found.agents
        if run_id_for(trigger, agent) not in existing
    ]


def on_handoff(
    handed: RunHandedOff,
    agents: Mapping[str, Agent],
    existing: Collection[str],
    now: datetime,
    subject_fields: Sequence[str] = (),
) -> list[Transition]:
    """Start the run a handoff asks for, unless it exists already; none for an unknown agent."""
    agent = agents.get(handed.to_agent)
    if agent is None or run_of(handed.event_id, handed.to_agent) in existing:
        return []
    trigger = coordinate.trigger_of(handed)
    return [start_run(trigger, agent, now, depth=handed.depth, subject_fields=subject_fields)]


def start_run(
    trigger: TriggerReceived,
    agent: Agent,
    now: datetime,
    depth: int = 0,
    *,
    claimed: str | None = None,
    subject_fields: Sequence[str] = (),
) -> Transition:
    run_id = run_id_for(trigger, agent)
    state = RunState(run_id=run_id, agent=agent, trigger=trigger, depth=depth)
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
        submitter_claimed=claimed,
        subject=subjects.named([trigger.data], subject_fields),
    )
    first = reason.begin(state, started, now) if agent.reasons else _next(state, started, now)
    return replace(first, outputs=[started, *first.outputs])


def on_signal(signal: TriggerReceived, state: RunState, now: datetime) -> Transition | None:
    """The business event a waiting run awaits has come: its data is the step's result."""
    if not coordinate.awaited(state, signal):
        return None
    step = state.agent.steps[state.step_index]
    return _step_done(state, step, signal.data, coordinate.within(signal, state), now)


def on_wait_expired(expired: WaitExpired, state: RunState, now: datetime) -> Transition | None:
    """The wait ran out: fail, escalate, or go on, as the step says; None if it is over already."""
    if state.status != "waiting" or expired.step != state.step_index:
        return None
    step = state.agent.steps[state.step_index]
    assert step.wait is not None
    wait = step.wait
    why = f"step {step.id}: no {wait.event} with {wait.field} {state.wait_key} within {wait.timeout_s:g}s"
    if step.wait.on_timeout == "continue":
        return _step_done(state, step, {"timed_out": True}, expired, now)
    if step.wait.on_timeout == "escalate":
        return escalate(state, expired, "wait_timeout", why, now)
    return _fail(state, expired, "wait_timeout", why, now)


def on_outcome(outcome: Outcome, state: RunState | None, now: datetime) -> Transition | None:
    """Take a step's outcome; propose the next step, or end the run. None means nothing to do:
    the outcome is for a run already ended, or a step already past (a redelivery)."""
    if state is None or outcome.action.step_index != state.step_index:
        return None
    if state.chat is not None:
        return reason.on_outcome(outcome, state, now) if state.status == "running" else None
    handler = _BY_STATUS.get(state.status)
    return handler(outcome, state, now) if handler else None


def on_instruction(instruction: RunInstructed, state: RunState, now: datetime) -> Transition | None:
    """A human resumes an escalated run or cancels a live one; None if the run is in no state
    for it (already ended, or not escalated), which the service reports."""
    # Whatever the run emits next gets ids of its own, apart from those before the human acted.
    directed = replace(state, attempt=state.attempt + 1, escalated_from=None)
    if instruction.command == "cancel" and state.status in (*LIVE, "escalated", "cancelling"):
        who = instruction.instructed_by
        why = f"cancelled by {who}" + (f": {instruction.instruction}" if instruction.instruction else "")
        ending = Ending("cancelled", "human", why)
        if state.status == "cancelling":
            # The step under way is still awaited, so that it is undone with the others.
            return Transition(replace(state, ending=ending), [])
        return _cancel(directed, instruction, ending, now)
    if instruction.command != "resume" or state.status != "escalated":
        return None
    if state.chat is not None:
        return reason.resume(directed, instruction, now)
    if state.ending is not None and state.escalated_from in ("compensating", "cancelling"):
        # It was ending already (failing, or cancelled): a human resumes the ending, not the work.
        return _cancel(directed, instruction, state.ending, now, wait=False)
    return _next(replace(directed, status="running"), instruction, now)


def _on_step(outcome: Outcome, state: RunState, now: datetime) -> Transition:
    """A running run's step outcome."""
    if isinstance(outcome, ActionExecuted):
        return _advance(outcome, state, now)
    if isinstance(outcome, ToolUnavailable):
        return escalate(state, outcome, "tool_unavailable", outcome.reason, now)
    if isinstance(outcome, ActionFailed):
        if outcome.in_doubt:
            return _in_doubt(outcome, state, now)
        reason_ = f"{outcome.action.tool} failed: {outcome.error}"
        return _fail(state, outcome, "action_failed", reason_, now)
    reasons = "; ".join(outcome.decision.reasons) or "no reason given"
    if outcome.decision.limit in ESCALATE:
        # A loop, or an approval nobody gave in time, is not a verdict on the work: a human
        # looks at it and decides what comes next.
        return escalate(state, outcome, outcome.decision.limit or "", reasons, now)
    return _fail(state, outcome, "action_rejected", f"rejected by {outcome.rejected_by}: {reasons}", now)


def _advance(outcome: ActionExecuted, state: RunState, now: datetime) -> Transition:
    step = state.agent.steps[state.step_index]
    done = Done(state.step_index, outcome.action.resource, outcome.action.parameters, outcome.result)
    # Recorded as done before it is checked: a step that took effect, but not as required, is
    # undone with the others when its verification fails the run.
    return _step_done(replace(state, done=(*state.done, done)), step, outcome.result, outcome, now)


def _step_done(
    state: RunState, step: Step, result: dict[str, Any], cause: Event, now: datetime
) -> Transition:
    """A step is over: record its result, check it (`expect`), and go on."""
    advanced = replace(
        state,
        status="running",
        step_index=state.step_index + 1,
        results={**state.results, step.id: result},
        wait_key=None,
        wait_until=None,
    )
    if step.expect is not None:
        failure = _unverified(step.expect, {**template_context(advanced), "result": result})
        if failure is not None:
            why = f"step {step.id}: {failure}"
            return _fail(
                replace(advanced, step_index=state.step_index), cause, "verification_failed", why, now
            )
    return _next(advanced, cause, now)


def _hand_off(state: RunState, step: Step, cause: Event, now: datetime) -> Transition:
    assert step.handoff is not None
    refused = coordinate.too_deep(state)
    if refused is not None:
        return escalate(state, cause, "max_handoff_depth", f"step {step.id}: {refused}", now)
    try:
        shared = {"trigger": state.trigger.data, "steps": state.results}
        context = (
            shared if step.handoff.context is None else render(step.handoff.context, template_context(state))
        )
        label = f"handoff:{state.step_index}"
        handed = coordinate.hand_off(state, cause, step.handoff.agent, context, label=label, now=now)
    except (TemplateFailure, TypeError, ValueError) as exc:
        return _fail(state, cause, "plan_error", f"step {step.id}: {exc}", now)
    after = _step_done(state, step, coordinate.handed_result(handed), handed, now)
    return replace(after, outputs=[handed, *after.outputs])


def _wait(state: RunState, step: Step, cause: Event, now: datetime) -> Transition:
    assert step.wait is not None
    try:
        key = str(render(step.wait.key, template_context(state)))
    except TemplateFailure as exc:
        return _fail(state, cause, "plan_error", f"step {step.id}: {exc}", now)
    waiting = replace(
        state, status="waiting", wait_key=key, wait_until=now + timedelta(seconds=step.wait.timeout_s)
    )
    announced = RunWaiting.caused_by(
        cause,
        event_id=state.ids(f"waiting:{state.step_index}"),
        now=now,
        agent=state.agent.id,
        run_id=state.run_id,
        step=state.step_index,
        event_name=step.wait.event,
        key=key,
        timeout_s=step.wait.timeout_s,
    )
    return Transition(waiting, [announced])


def _unverified(expect: str, context: dict[str, Any]) -> str | None:
    try:
        if evaluate(expect, context):
            return None
    except TemplateFailure as exc:
        return f"cannot check {expect!r}: {exc}"
    return f"expected {expect!r}, which does not hold for result {canonical_json(context['result'])[:300]}"


def _next(state: RunState, cause: Event, now: datetime) -> Transition:
    """Propose the first step from `state.step_index` whose condition holds; complete the run
    if none is left."""
    steps = state.agent.steps
    index = state.step_index
    context = template_context(state)
    while index < len(steps) and steps[index].when is not None:
        try:
            if evaluate(str(steps[index].when), context):
                break
        except TemplateFailure as exc:
            return _fail(
                replace(state, step_index=index), cause, "plan_error", f"step {steps[index].id}: {exc}", now
            )
        index += 1
    state = replace(state, step_index=index)
    if index < len(steps):
        return _propose(state, cause, now)
    completed = RunCompleted.caused_by(
        cause,
        event_id=derive_id(state.run_id, "completed"),
        now=now,
        steps_completed=len(state.done),
        outputs=state.results,
    )
    return Transition(replace(state, status="completed"), [completed])


def _in_doubt(outcome: ActionFailed, state: RunState, now: datetime) -> Transition:
    # The evidence a human needs: which call, under which key, after how many attempts.
    evidence = (
        f"{outcome.action.tool} (idempotency key {outcome.idempotency_key}, "
        f"{outcome.attempts} attempt(s)): {outcome.error}"
    )
    return escalate(state, outcome, "in_doubt", evidence, now)


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
    return Transition(replace(state, status="cancelled"), [end(state, outcome, ending, now)])


def _tools_ahead(state: RunState) -> set[str]:
    if state.chat is not None:
        # A model may call any tool its agent holds, at any turn.
        return set(state.agent.tools)
    return {step.tool for step in state.agent.steps[state.step_index :] if step.tool is not None}


def affected(state: RunState, switch: KillSwitchSet) -> bool:
    """A live run the switch stops: its agent's, or one with the tool still ahead of it."""
    if state.status not in LIVE:
        return False
    if switch.scope_agent is not None and switch.scope_agent != state.agent.id:
        return False
    return switch.scope_tool is None or switch.scope_tool in _tools_ahead(state)


def on_kill_switch(switch: KillSwitchSet, runs: Collection[RunState], now: datetime) -> list[Transition]:
    """Cancel every run the switch stops; a switch turned off cancels nothing."""
    if not switch.active:
        return []
    transitions = []
    for state in sorted(runs, key=lambda s: s.run_id):
        if affected(state, switch):
            ending = Ending("cancelled", "kill_switch", switch.reason, switch_id=switch.switch_id)
            # A step under way on another tool than the one switched off can still take effect.
            tool = switch.scope_tool
            wait = tool is not None and _in_flight(state) not in (None, tool)
            transitions.append(_cancel(state, switch, ending, now, lineage=state.trigger, wait=wait))
    return transitions


def _in_flight(state: RunState) -> str | None:
    """The tool of the running playbook step that can still take effect and be undone."""
    steps = state.agent.steps
    if state.status != "running" or state.chat is not None or state.step_index >= len(steps):
        return None
    step = steps[state.step_index]
    return step.tool if step.compensate is not None else None


def _cancel(
    state: RunState,
    cause: Event,
    ending: Ending,
    now: datetime,
    *,
    lineage: Event | None = None,
    wait: bool = True,
) -> Transition:
    """Cancel a run, undoing what it did. With `wait`, a step under way that can still take
    effect is waited for first (the run is `cancelling`), so that it is undone with the others."""
    if wait and _in_flight(state) is not None:
        return Transition(replace(state, status="cancelling", ending=ending), [])
    if _undoable(state):
        return _start_compensation(state, cause, ending, now, lineage=lineage)
    return Transition(replace(state, status=ending.kind), [end(state, cause, ending, now, lineage=lineage)])


def template_context(state: RunState) -> dict[str, Any]:
    trigger = state.trigger
    return {
        "trigger": trigger.data,
        "event": {"id": trigger.event_id, "name": trigger.name, "source": trigger.source},
        "steps": state.results,
        "run": {"id": state.run_id, "agent": state.agent.id},
    }


def _propose(state: RunState, cause: Event, now: datetime) -> Transition:
    step = state.agent.steps[state.step_index]
    if step.handoff is not None:
        return _hand_off(state, step, cause, now)
    if step.wait is not None:
        return _wait(state, step, cause, now)
    assert step.tool is not None
    context = template_context(state)
    try:
        # The round trip through JSON rejects values a template produced that JSON cannot carry.
        parameters = json.loads(canonical_json(render(step.parameters, context)))
        resource = render(step.resource, context) if step.resource is not None else step.tool
    except (TemplateFailure, TypeError, ValueError) as exc:
        return _fail(state, cause, "plan_error", f"step {step.id}: {exc}", now)
    call = Call(step.id, step.tool, str(resource), parameters)
    return Transition(state, [propose(state, call, cause, now)])


def _fail(state: RunState, cause: Event, kind: str, why: str, now: datetime) -> Transition:
    ending = Ending("failed", kind, why, step=state.step_index)
    if _undoable(state):
        return _start_compensation(state, cause, ending, now)
    return Transition(replace(state, status="failed"), [end(state, cause, ending, now)])


def _undoable(state: RunState) -> tuple[int, ...]:
    """The steps that took effect, have a compensation and are not undone yet, last first."""
    steps = state.agent.steps
    return tuple(
        d.step_index
        for d in reversed(state.done)
        if steps[d.step_index].compensate is not None and steps[d.step_index].id not in state.undone
    )


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
        return escalate(state, cause, "compensation_failed", f"cannot undo step {step.id}: {exc}", now)
    call = Call(f"undo-{step.id}", step.compensate.tool, resource, parameters, compensates=step.id)
    return Transition(state, [propose(state, call, cause, now, lineage)])


def _on_compensation(outcome: Outcome, state: RunState, now: datetime) -> Transition:
    assert state.ending is not None
    step = state.agent.steps[state.undo[0]]
    if not isinstance(outcome, ActionExecuted):
        why = describe_failure(outcome)
        reason = f"{state.ending.reason}; undoing step {step.id} did not succeed: {why}"
        return escalate(state, outcome, "compensation_failed", reason, now)
    advanced = replace(
        state, step_index=state.step_index + 1, undo=state.undo[1:], undone=(*state.undone, step.id)
    )
    if advanced.undo:
        return _propose_compensation(advanced, outcome, now)
    status: Status = state.ending.kind
    return Transition(replace(advanced, status=status), [end(advanced, outcome, state.ending, now)])


def describe_failure(outcome: ActionFailed | ActionRejected | ToolUnavailable) -> str:
    if isinstance(outcome, ActionFailed):
        return outcome.error
    if isinstance(outcome, ToolUnavailable):
        return outcome.reason
    return f"rejected by {outcome.rejected_by}: {'; '.join(outcome.decision.reasons)}"


_BY_STATUS = {"running": _on_step, "cancelling": _on_cancelled_step, "compensating": _on_compensation}
