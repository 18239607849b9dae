"""A run as the planner keeps it, and the transitions both tiers share: escalating to a human
and ending. A playbook run walks its steps (decide.py); a model-planned run keeps its
conversation (reason.py). Either is only state between events: a run that waits days for a
human or a result holds a row, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from charter import triggering
from charter.agents import Agent
from charter.clock import derive_id
from charter.events import (
    Action,
    ActionProposed,
    Event,
    RunCancelled,
    RunEscalated,
    RunFailed,
    TriggerReceived,
)

Status = Literal[
    "running", "waiting", "cancelling", "compensating", "completed", "failed", "cancelled", "escalated"
]
# A run in these may still act: a kill switch or a human's cancel stops it.
LIVE: tuple[Status, ...] = ("running", "waiting")


def run_of(trigger_event_id: str, agent_id: str) -> str:
    """A run's id: one run per business event (or handoff) and agent, however often it arrives.
    The rule is charter.triggering's, which also tells a publisher the runs an event starts."""
    return triggering.run_of(trigger_event_id, agent_id)


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
class Chat:
    """A model-planned run's conversation, and what it has spent.

    `pending` is the tool call whose answer the model waits for; `proposed` says whether it went
    out as an action (and so takes the step index it holds). `queued` holds the further tool
    calls of the same reply: they are proposed one at a time, like a playbook's steps. Tokens
    and cost not yet charged (`unbilled_*`) ride on the next proposal, so policy's budgets see
    every model call, including those that proposed nothing."""

    messages: tuple[dict[str, Any], ...] = ()
    queued: tuple[dict[str, Any], ...] = ()
    pending: str | None = None
    proposed: bool = False
    turns: int = 0
    errors: int = 0
    tokens: int = 0
    cost: float = 0.0
    unbilled_tokens: int = 0
    unbilled_cost: float = 0.0


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
    chat: Chat | None = None
    # How often a human resumed the run; it keeps the ids of what it proposes after that unique.
    attempt: int = 0
    escalated_from: Status | None = None
    # How many handoffs from its business event this run is.
    depth: int = 0
    # While waiting: the key the awaited event must carry, and until when.
    wait_key: str | None = None
    wait_until: datetime | None = None

    def ids(self, label: str) -> str:
        """The id of what the run emits under `label`, unique across resumptions."""
        return derive_id(self.run_id, f"{label}:{self.attempt}" if self.attempt else label)


@dataclass(frozen=True)
class Transition:
    """The run's next state and what it emits. `think` asks the service for the model's next
    message, which it feeds back through `reason.on_reply`."""

    state: RunState
    outputs: list[Event]
    think: bool = False


@dataclass(frozen=True)
class Call:
    """An action a run proposes at its current step: a playbook step, a compensation, or a
    model's tool call."""

    step_id: str
    tool: str
    resource: str
    parameters: dict[str, Any]
    compensates: str | None = None


def propose(
    state: RunState, call: Call, cause: Event, now: datetime, lineage: Event | None = None, **extra: Any
) -> ActionProposed:
    """The proposal, under ids the run's step (and resumption) make unique."""
    action = Action(
        action_id=state.ids(f"action:{state.step_index}"),
        step_index=state.step_index,
        step_id=call.step_id,
        tool=call.tool,
        resource=call.resource,
        parameters=call.parameters,
        environment=state.agent.environment,
        compensates=call.compensates,
    )
    return ActionProposed.caused_by(
        cause,
        lineage=lineage,
        event_id=state.ids(f"proposed:{state.step_index}"),
        now=now,
        agent=state.agent.id,
        run_id=state.run_id,
        action=action,
        triggered_by=state.trigger.submitted_by,
        **extra,
    )


def escalation_context(state: RunState) -> dict[str, Any]:
    """What a human needs to decide how the run goes on."""
    if state.chat is None:
        steps = state.agent.steps
        if state.step_index < len(steps):
            step = steps[state.step_index]
            return {"step_id": step.id, "tool": step.tool, "results": state.results}
        return {"results": state.results}
    chat = state.chat
    said = next((m.get("content") for m in reversed(chat.messages) if m.get("role") == "assistant"), None)
    return {
        "last_message": said,
        "pending_tool_call": chat.pending,
        "turns": chat.turns,
        "errors": chat.errors,
        "actions": state.step_index,
    }


def escalate(state: RunState, cause: Event, kind: str, reason: str, now: datetime) -> Transition:
    chat = state.chat
    escalated = RunEscalated.caused_by(
        cause,
        event_id=state.ids("escalated"),
        now=now,
        agent=state.agent.id,
        run_id=state.run_id,
        cause=kind,
        reason=reason,
        step=state.step_index,
        llm_tokens=chat.tokens if chat else 0,
        llm_cost=chat.cost if chat else 0.0,
        context=escalation_context(state),
    )
    return Transition(replace(state, status="escalated", escalated_from=state.status), [escalated])


def end(state: RunState, cause: Event, ending: Ending, now: datetime, lineage: Event | None = None) -> Event:
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
