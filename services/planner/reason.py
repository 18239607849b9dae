"""The reasoning tier: a run planned by a model, decided here without I/O.

The model is never trusted. It sees only the tools its agent holds, and each tool call it makes
becomes an `ActionProposed` like a playbook step's: policy decides it, a human approves it where
policy says so, the executor runs it. Its result (or the denial, or the error) comes back as
the tool message, and the model is asked again, until it answers without a tool call or a
bound stops it: `max_turns` model calls, `max_errors` calls answered as errors (an unknown tool,
arguments that are not JSON or do not fit the tool, a failure, a denial), or the agent's
token and cost budgets. A call to a registered tool the agent does not hold is proposed too,
so policy denies it and the audit keeps the attempt. The model asks a human with `ask_human`.
Anything that stops the run escalates it, with the context a human needs to resume it with an
instruction or cancel it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionRejected,
    Event,
    RunCompleted,
    RunHandedOff,
    RunInstructed,
    RunStarted,
    ToolUnavailable,
    canonical_json,
)
from charter.templating import TemplateFailure, render
from charter.tools import ToolSpec
from services.planner import coordinate
from services.planner.model import Reply, ToolCall
from services.planner.run import Call, Chat, RunState, Transition, escalate, propose

ASK_HUMAN = "ask_human"
HANDOFF = "handoff"
_ASK_HUMAN_TOOL = {
    "type": "function",
    "function": {
        "name": ASK_HUMAN,
        "description": "Stop and ask a human how to go on; they answer with an instruction.",
        "parameters": {
            "type": "object",
            "properties": {"question": {"type": "string"}},
            "required": ["question"],
        },
    },
}
GOVERNANCE = (
    "You act only through the tools given. Every tool call is decided by policy: it may be denied, "
    "or wait for a human's approval. When you are done, answer without a tool call. To ask a human, "
    f"call {ASK_HUMAN}."
)
Outcome = ActionExecuted | ActionFailed | ActionRejected | ToolUnavailable


@dataclass(frozen=True)
class Pricing:
    """Cost units per 1,000 prompt and completion tokens."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0

    def cost(self, reply: Reply) -> float:
        return (reply.prompt_tokens * self.input_per_1k + reply.completion_tokens * self.output_per_1k) / 1000


def _chat(state: RunState) -> Chat:
    assert state.chat is not None, f"run {state.run_id} is not planned by a model"
    return state.chat


def begin(state: RunState, started: RunStarted, now: datetime) -> Transition:
    """The conversation a run starts with: the agent's instructions, and the business event."""
    plan = state.agent.llm
    assert plan is not None
    trigger = state.trigger
    event = (
        f"Business event {trigger.name} (id {trigger.event_id}, from {trigger.source}):\n"
        f"{canonical_json(trigger.data)}"
    )
    messages = (
        {"role": "system", "content": f"{plan.instructions}\n\n{GOVERNANCE}"},
        {"role": "user", "content": event},
    )
    return Transition(replace(state, chat=Chat(messages=messages)), [], think=True)


def _handoff_tool(agents: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": HANDOFF,
            "description": "Hand the work to another agent, with what you ask of it.",
            "parameters": {
                "type": "object",
                "properties": {"agent": {"type": "string", "enum": agents}, "task": {"type": "string"}},
                "required": ["agent", "task"],
            },
        },
    }


@functools.cache
def _parameters_text(params: type[BaseModel]) -> str:
    """A tool's parameters' JSON schema, made once: it costs more than the rest of a request."""
    schema = params.model_json_schema()
    schema.pop("title", None)
    return json.dumps(schema)


def _parameters(params: type[BaseModel]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(_parameters_text(params))  # a copy the caller may change
    return loaded


def tool_schemas(state: RunState, registry: Mapping[str, ToolSpec]) -> list[dict[str, Any]]:
    """What the model may call: the agent's tools, from the registry, `ask_human`, and
    `handoff` if the agent may hand work to others."""
    schemas = []
    for name in state.agent.tools:
        spec = registry.get(name)
        if spec is None:
            continue
        parameters = _parameters(spec.params)
        schemas.append(
            {
                "type": "function",
                "function": {"name": name, "description": spec.description or name, "parameters": parameters},
            }
        )
    handoff = [_handoff_tool(state.agent.handoffs)] if state.agent.handoffs else []
    return [*schemas, _ASK_HUMAN_TOOL, *handoff]


def request(state: RunState, registry: Mapping[str, ToolSpec], default_model: str | None) -> dict[str, Any]:
    """The chat-completions request for the run's next model call."""
    plan = state.agent.llm
    assert plan is not None
    body: dict[str, Any] = {
        "model": plan.model or default_model or "",
        "messages": list(_chat(state).messages),
        "tools": tool_schemas(state, registry),
        "tool_choice": "auto",
    }
    if plan.temperature is not None:
        body["temperature"] = plan.temperature
    return body


def before_call(state: RunState, cause: Event, now: datetime) -> Transition | None:
    """Escalate rather than call the model past the run's bounds."""
    plan, chat, limits = state.agent.llm, _chat(state), state.agent.limits
    assert plan is not None
    if chat.turns >= plan.max_turns:
        return escalate(state, cause, "max_turns", f"the model has had {chat.turns} turns (max_turns)", now)
    if limits.tokens_per_run is not None and chat.tokens >= limits.tokens_per_run:
        why = f"tokens_per_run: {chat.tokens} tokens spent (limit {limits.tokens_per_run})"
        return escalate(state, cause, "tokens_per_run", why, now)
    if limits.llm_cost_per_run is not None and chat.cost >= limits.llm_cost_per_run:
        why = f"llm_cost_per_run: {chat.cost:g} spent (limit {limits.llm_cost_per_run:g})"
        return escalate(state, cause, "llm_cost_per_run", why, now)
    return None


def on_model_error(state: RunState, cause: Event, error: str, now: datetime) -> Transition:
    return escalate(state, cause, "model_unavailable", error, now)


def _answer(chat: Chat, call_id: str, content: str) -> Chat:
    return replace(
        chat, messages=(*chat.messages, {"role": "tool", "tool_call_id": call_id, "content": content})
    )


def _check(
    call: ToolCall, state: RunState, registry: Mapping[str, ToolSpec]
) -> tuple[str | None, dict[str, Any]]:
    """A problem with the call, told to the model; else the call, as the planner proposes it."""
    spec = registry.get(call.name)
    if spec is None:
        return f"unknown tool {call.name!r}; the tools are {', '.join(state.agent.tools)}", {}
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        return f"the arguments of {call.name} are not valid JSON: {exc}", {}
    if not isinstance(arguments, dict):
        return f"the arguments of {call.name} must be a JSON object", {}
    try:
        parameters = json.loads(spec.params.model_validate(arguments).model_dump_json())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        return f"invalid arguments for {call.name}: {problems}", {}
    plan = state.agent.llm
    assert plan is not None
    template = plan.resources.get(call.name)
    try:
        resource = (
            str(render(template, {"params": parameters, "trigger": state.trigger.data}))
            if template
            else call.name
        )
    except TemplateFailure as exc:
        return f"cannot tell what {call.name} acts on: {exc}", {}
    return None, {"id": call.id, "tool": call.name, "resource": resource, "parameters": parameters}


def on_reply(
    state: RunState,
    reply: Reply,
    cause: Event,
    now: datetime,
    *,
    registry: Mapping[str, ToolSpec],
    pricing: Pricing,
) -> Transition:
    """Take the model's message: complete the run, ask a human, or propose its tool calls."""
    cost = pricing.cost(reply)
    chat = _chat(state)
    chat = replace(
        chat,
        messages=(*chat.messages, reply.message),
        turns=chat.turns + 1,
        tokens=chat.tokens + reply.tokens,
        cost=chat.cost + cost,
        unbilled_tokens=chat.unbilled_tokens + reply.tokens,
        unbilled_cost=chat.unbilled_cost + cost,
    )
    state = replace(state, chat=chat)
    if not reply.tool_calls:
        return _complete(state, reply.content or "", cause, now)
    asked = next((c for c in reply.tool_calls if c.name == ASK_HUMAN), None)
    if asked is not None:
        return _ask(state, asked, reply, cause, now)
    queued: list[dict[str, Any]] = []
    problems: list[str] = []
    handed: list[RunHandedOff] = []
    for position, call in enumerate(reply.tool_calls):
        problem: str | None
        if call.name == HANDOFF and state.agent.handoffs:
            problem, handoff = _hand_off(state, call, position, cause, now)
            if handoff is not None:
                handed.append(handoff)
                chat = _answer(chat, call.id, canonical_json(coordinate.handed_result(handoff)))
                continue
        else:
            problem, proposal = _check(call, state, registry)
            if problem is None:
                queued.append(proposal)
                continue
        problems.append(problem or "")
        chat = _answer(chat, call.id, f"error: {problem}")
    if problems:
        chat = replace(chat, errors=chat.errors + 1)
    state = replace(state, chat=replace(chat, queued=(*chat.queued, *queued)))
    after = _go_on(state, cause, now, "; ".join(p for p in problems if p))
    return replace(after, outputs=[*handed, *after.outputs])


def _hand_off(
    state: RunState, call: ToolCall, position: int, cause: Event, now: datetime
) -> tuple[str, RunHandedOff | None]:
    """The model hands the work on: a handoff to an agent this one may hand to, not too deep."""
    try:
        arguments = json.loads(call.arguments or "{}")
        agent, task = str(arguments["agent"]), str(arguments.get("task", ""))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"the arguments of {HANDOFF} must be a JSON object with agent and task: {exc}", None
    if agent not in state.agent.handoffs:
        return f"this agent may hand work only to {', '.join(state.agent.handoffs)}, not {agent!r}", None
    refused = coordinate.too_deep(state)
    if refused is not None:
        return refused, None
    context = {"task": task, "trigger": state.trigger.data, "results": state.results}
    # Named by the model's turn and the call's place in its message, not by the server's call id.
    label = f"handoff:{_chat(state).turns}:{position}"
    return "", coordinate.hand_off(state, cause, agent, context, label=label, now=now, task=task)


def _ask(state: RunState, asked: ToolCall, reply: Reply, cause: Event, now: datetime) -> Transition:
    chat = _chat(state)
    for other in reply.tool_calls:
        if other.id != asked.id:
            chat = _answer(chat, other.id, "not run: you asked a human first")
    try:
        question = str(json.loads(asked.arguments or "{}").get("question", ""))
    except (json.JSONDecodeError, AttributeError):
        question = asked.arguments
    state = replace(state, chat=replace(chat, pending=asked.id, proposed=False))
    return escalate(state, cause, "model_asked", question or "the model asked for a human", now)


def _complete(state: RunState, answer: str, cause: Event, now: datetime) -> Transition:
    chat = _chat(state)
    completed = RunCompleted.caused_by(
        cause,
        event_id=state.ids("completed"),
        now=now,
        steps_completed=state.step_index,
        outputs={"answer": answer, "actions": state.results},
        llm_tokens=chat.tokens,
        llm_cost=chat.cost,
    )
    return Transition(replace(state, status="completed"), [completed])


def _go_on(state: RunState, cause: Event, now: datetime, problem: str = "") -> Transition:
    """Propose the next queued call, else ask the model again, unless errors are spent."""
    chat, plan = _chat(state), state.agent.llm
    assert plan is not None
    if chat.errors > plan.max_errors:
        why = f"{chat.errors} tool calls answered as errors (max_errors {plan.max_errors})"
        return escalate(
            state, cause, "tool_call_errors", f"{why}; the last: {problem}" if problem else why, now
        )
    if not chat.queued:
        return Transition(state, [], think=True)
    call, rest = chat.queued[0], chat.queued[1:]
    step = Call(f"call-{state.step_index}", call["tool"], call["resource"], call["parameters"])
    proposed = propose(state, step, cause, now, llm_tokens=chat.unbilled_tokens, llm_cost=chat.unbilled_cost)
    chat = replace(chat, queued=rest, pending=call["id"], proposed=True, unbilled_tokens=0, unbilled_cost=0.0)
    return Transition(replace(state, chat=chat), [proposed])


def on_outcome(outcome: Outcome, state: RunState, now: datetime) -> Transition:
    """The result of the pending call, told to the model; limits and doubt escalate."""
    chat = _chat(state)
    assert chat.pending is not None
    if isinstance(outcome, ToolUnavailable):
        return escalate(state, outcome, "tool_unavailable", outcome.reason, now)
    if isinstance(outcome, ActionFailed) and outcome.in_doubt:
        why = f"{outcome.action.tool} (idempotency key {outcome.idempotency_key}): {outcome.error}"
        return escalate(state, outcome, "in_doubt", why, now)
    if isinstance(outcome, ActionRejected) and outcome.decision.limit:
        # A budget, a rate, a loop or an expired approval: the model cannot argue with a limit.
        reasons = "; ".join(outcome.decision.reasons)
        return escalate(state, outcome, outcome.decision.limit, reasons, now)
    results = state.results
    errors = chat.errors
    if isinstance(outcome, ActionExecuted):
        content = canonical_json(outcome.result)
        results = {**results, outcome.action.step_id: {"tool": outcome.action.tool, "result": outcome.result}}
    elif isinstance(outcome, ActionFailed):
        content, errors = f"error: {outcome.action.tool} failed: {outcome.error}", errors + 1
    else:
        reasons = "; ".join(outcome.decision.reasons) or "no reason given"
        content, errors = f"denied by {outcome.rejected_by}: {reasons}", errors + 1
    chat = replace(_answer(chat, chat.pending, content), pending=None, proposed=False, errors=errors)
    advanced = replace(state, step_index=state.step_index + 1, results=results, chat=chat)
    return _go_on(advanced, outcome, now, content)


def resume(state: RunState, instruction: RunInstructed, now: datetime) -> Transition:
    """A human's instruction, as the answer to the call the run stopped at (or as a message),
    and a fresh allowance of turns and errors."""
    chat = _chat(state)
    for call in chat.queued:
        # Every call of the model's last message is answered before the human's words.
        chat = _answer(chat, call["id"], "not run: the run stopped for a human first")
    chat = replace(chat, queued=())
    said = f"A human ({instruction.instructed_by}) says: {instruction.instruction or 'go on'}"
    step = state.step_index
    if chat.pending is not None:
        # An action in doubt or stopped by a limit keeps its step; the run moves past it.
        step += 1 if chat.proposed else 0
        chat = replace(_answer(chat, chat.pending, said), pending=None, proposed=False)
    else:
        chat = replace(chat, messages=(*chat.messages, {"role": "user", "content": said}))
    state = replace(state, status="running", step_index=step, chat=replace(chat, turns=0, errors=0))
    return _go_on(state, instruction, now)
