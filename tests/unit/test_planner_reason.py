"""The reasoning tier's decisions (services/planner/reason.py), with scripted model replies."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from charter import agents, tools
from charter.clock import new_id
from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRejected,
    Decision,
    Event,
    KillSwitchSet,
    RunCancelled,
    RunCompleted,
    RunEscalated,
    RunHandedOff,
    RunInstructed,
    RunStarted,
)
from charter.limits import AgentLimits
from services.planner import decide, reason
from services.planner.model import Reply, ToolCall
from services.planner.run import RunState, Transition
from tests.conftest import REPO
from tests.factories import trigger

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
REGISTRY = tools.load(["charter.demo.tools"])
AGENTS = agents.load(REPO / "agents", REGISTRY)
PRICING = reason.Pricing(input_per_1k=1.0, output_per_1k=2.0)


def start(**data: object) -> Transition:
    t = trigger("support.ticket_opened", **data)
    [transition] = decide.on_trigger(t, {"support-assistant": AGENTS["support-assistant"]}, set(), NOW)
    return transition


def reply(*calls: tuple[str, Any], content: str | None = None) -> Reply:
    tool_calls = tuple(
        ToolCall(f"c{i}", name, args if isinstance(args, str) else json.dumps(args))
        for i, (name, args) in enumerate(calls)
    )
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in tool_calls
        ]
    return Reply(message, content, tool_calls, prompt_tokens=1000, completion_tokens=500)


def answer(state: RunState, r: Reply, cause: Event | None = None) -> Transition:
    return reason.on_reply(state, r, cause or state.trigger, NOW, registry=REGISTRY, pricing=PRICING)


def executed(proposed: ActionProposed, result: dict[str, object]) -> ActionExecuted:
    return ActionExecuted.caused_by(
        proposed,
        now=NOW,
        action=proposed.action,
        idempotency_key="k",
        result=result,
        duration_ms=1,
        attempts=1,
    )


def rejected(proposed: ActionProposed, limit: str | None = None) -> ActionRejected:
    decision = Decision(
        outcome="deny", policy_ids=[], policy_hash="h", reasons=["no"], approval_roles=[], limit=limit
    )
    return ActionRejected.caused_by(
        proposed, now=NOW, action=proposed.action, decision=decision, rejected_by="policy"
    )


def instructed(state: RunState, command: str, text: str = "") -> RunInstructed:
    return RunInstructed.create(
        event_id=new_id(),
        now=NOW,
        tenant="acme",
        correlation_id=state.trigger.envelope.correlation_id,
        run_id=state.run_id,
        command=command,
        instruction=text,
        instructed_by="omar",
    )


def proposed_after(state: RunState, *calls: tuple[str, Any]) -> tuple[RunState, ActionProposed]:
    step = answer(state, reply(*calls))
    [proposal] = step.outputs
    assert isinstance(proposal, ActionProposed)
    return step.state, proposal


def test_a_run_starts_by_asking_the_model_with_the_agents_tools_only() -> None:
    first = start(order_id="A-100")
    [started] = first.outputs
    assert isinstance(started, RunStarted)
    assert first.think
    assert started.steps == 0
    body = reason.request(first.state, REGISTRY, "gpt-test")
    assert body["model"] == "gpt-test"
    offered = [t["function"]["name"] for t in body["tools"]]
    assert offered == ["lookup_order", "issue_refund", "notify_customer", "ask_human"]
    lookup = body["tools"][0]["function"]["parameters"]
    assert lookup["required"] == ["order_id"]
    system, user = body["messages"]
    assert "customer support agent" in system["content"]
    assert "decided by policy" in system["content"]
    assert '"order_id":"A-100"' in user["content"]


def test_each_tool_call_is_proposed_with_its_target_tokens_and_cost() -> None:
    state, proposal = proposed_after(start(order_id="A-100").state, ("lookup_order", {"order_id": "A-100"}))
    assert (proposal.action.tool, proposal.action.resource) == ("lookup_order", "order/A-100")
    assert proposal.action.parameters == {"order_id": "A-100"}
    assert (proposal.action.step_index, proposal.action.step_id) == (0, "call-0")
    assert proposal.llm_tokens == 1500
    assert proposal.llm_cost == 2.0  # 1,000 prompt tokens at 1.0 and 500 completion tokens at 2.0 per 1,000
    assert state.chat is not None
    assert state.chat.pending == "c0"


def test_the_result_goes_back_to_the_model_and_its_answer_completes_the_run() -> None:
    state, proposal = proposed_after(start(order_id="A-100").state, ("lookup_order", {"order_id": "A-100"}))
    back = decide.on_outcome(executed(proposal, {"currency": "EUR"}), state, NOW)
    assert back is not None
    assert back.think
    assert back.outputs == []
    assert back.state.chat is not None
    assert back.state.chat.messages[-1] == {
        "role": "tool",
        "tool_call_id": "c0",
        "content": '{"currency":"EUR"}',
    }
    done = answer(back.state, reply(content="All done."))
    [completed] = done.outputs
    assert isinstance(completed, RunCompleted)
    assert completed.outputs["answer"] == "All done."
    assert completed.steps_completed == 1
    assert (completed.llm_tokens, completed.llm_cost) == (3000, 4.0)
    assert done.state.status == "completed"
    # A redelivered outcome for the step already past changes nothing.
    assert decide.on_outcome(executed(proposal, {"currency": "EUR"}), done.state, NOW) is None


def test_malformed_calls_are_answered_as_errors_until_the_run_escalates() -> None:
    state = start(order_id="A-100").state
    problems = [
        ("launch_rockets", {}),
        ("lookup_order", '{"order_id": '),
        ("lookup_order", {"order": 1}),
        ("lookup_order", "[1]"),
    ]
    for i, call in enumerate(problems):
        step = answer(state, reply(call))
        state = step.state
        assert state.chat is not None
        if i < 3:
            assert step.think
            assert step.outputs == []
        said = state.chat.messages[-1]["content"]
        assert said.startswith("error: ")
    assert state.chat is not None
    assert "unknown tool 'launch_rockets'" in state.chat.messages[3]["content"]
    [escalated] = step.outputs
    assert isinstance(escalated, RunEscalated)
    assert escalated.cause == "tool_call_errors"
    assert escalated.context["errors"] == 4
    assert escalated.llm_tokens == 6000


def test_a_registered_tool_the_agent_does_not_hold_is_proposed_so_policy_denies_it() -> None:
    state, proposal = proposed_after(
        start(order_id="A-100").state,
        (
            "grant_access",
            {"user": "eve", "system": "payroll-db", "level": "admin", "target_environment": "prod"},
        ),
    )
    assert proposal.action.tool == "grant_access"
    back = decide.on_outcome(rejected(proposal), state, NOW)
    assert back is not None
    assert back.think
    assert back.state.chat is not None
    assert back.state.chat.messages[-1]["content"] == "denied by policy: no"
    assert back.state.chat.errors == 1


def test_a_limit_escalates_rather_than_being_argued_with() -> None:
    state, proposal = proposed_after(start(order_id="A-100").state, ("lookup_order", {"order_id": "A-100"}))
    back = decide.on_outcome(rejected(proposal, limit="tokens_per_run"), state, NOW)
    assert back is not None
    [escalated] = back.outputs
    assert isinstance(escalated, RunEscalated)
    assert escalated.cause == "tokens_per_run"


def test_two_calls_in_one_reply_are_proposed_one_after_the_other() -> None:
    state, first = proposed_after(
        start(order_id="A-100").state,
        ("lookup_order", {"order_id": "A-100"}),
        ("lookup_order", {"order_id": "A-200"}),
    )
    nxt = decide.on_outcome(executed(first, {"currency": "EUR"}), state, NOW)
    assert nxt is not None
    assert not nxt.think
    [second] = nxt.outputs
    assert isinstance(second, ActionProposed)
    assert (second.action.step_index, second.action.parameters) == (1, {"order_id": "A-200"})
    assert second.llm_tokens == 0  # the reply's tokens were charged to the first


def test_an_in_doubt_action_escalates_and_a_human_resumes_past_it() -> None:
    state, proposal = proposed_after(start(order_id="A-100").state, ("lookup_order", {"order_id": "A-100"}))
    failed = ActionFailed.caused_by(
        proposal, now=NOW, action=proposal.action, idempotency_key="k", error="timeout", error_type="T",
        in_doubt=True, attempts=3,
    )  # fmt: skip
    stopped = decide.on_outcome(failed, state, NOW)
    assert stopped is not None
    [escalated] = stopped.outputs
    assert isinstance(escalated, RunEscalated)
    assert escalated.cause == "in_doubt"
    resumed = decide.on_instruction(
        instructed(stopped.state, "resume", "it did not go through"), stopped.state, NOW
    )
    assert resumed is not None
    assert resumed.think
    assert resumed.state.status == "running"
    assert resumed.state.step_index == 1
    assert resumed.state.chat is not None
    assert resumed.state.chat.messages[-1]["content"] == "A human (omar) says: it did not go through"
    # Its next escalation gets an id of its own.
    again = reason.on_model_error(resumed.state, escalated, "down", NOW)
    assert again.outputs[0].event_id != escalated.event_id


def test_the_model_asks_a_human_and_the_instruction_answers_its_question() -> None:
    asked = answer(start(order_id="A-100").state, reply(("ask_human", {"question": "All of it?"})))
    [escalated] = asked.outputs
    assert isinstance(escalated, RunEscalated)
    assert (escalated.cause, escalated.reason) == ("model_asked", "All of it?")
    resumed = decide.on_instruction(instructed(asked.state, "resume", "refund 30"), asked.state, NOW)
    assert resumed is not None
    assert resumed.state.step_index == 0  # nothing was proposed for the question
    assert resumed.state.chat is not None
    assert resumed.state.chat.messages[-1]["tool_call_id"] == "c0"


def test_a_human_cancels_a_model_planned_run() -> None:
    asked = answer(start(order_id="A-100").state, reply(("ask_human", {"question": "?"})))
    cancelled = decide.on_instruction(instructed(asked.state, "cancel", "not needed"), asked.state, NOW)
    assert cancelled is not None
    [end] = cancelled.outputs
    assert isinstance(end, RunCancelled)
    assert (end.cause, end.reason) == ("human", "cancelled by omar: not needed")
    # Neither resumed nor cancelled again once it has ended.
    assert decide.on_instruction(instructed(cancelled.state, "resume"), cancelled.state, NOW) is None


def test_turns_and_token_budgets_stop_the_model_before_it_is_called() -> None:
    state = start(order_id="A-100").state
    assert state.chat is not None
    assert reason.before_call(state, state.trigger, NOW) is None
    spent = replace(state, chat=replace(state.chat, turns=8))
    stop = reason.before_call(spent, state.trigger, NOW)
    assert stop is not None
    assert stop.outputs[0].cause == "max_turns"  # type: ignore[attr-defined]
    tight = replace(state, agent=state.agent.model_copy(update={"limits": AgentLimits(tokens_per_run=100)}))
    assert tight.chat is not None
    over = replace(tight, chat=replace(tight.chat, tokens=100))
    stop = reason.before_call(over, state.trigger, NOW)
    assert stop is not None
    assert stop.outputs[0].cause == "tokens_per_run"  # type: ignore[attr-defined]


def test_a_kill_switch_on_a_tool_the_agent_holds_cancels_its_run() -> None:
    state = start(order_id="A-100").state
    switch = KillSwitchSet.create(
        event_id=new_id(), now=NOW, tenant="acme", correlation_id="c", switch_id="s",
        scope_tool="issue_refund", active=True, reason="fraud", set_by="omar",
    )  # fmt: skip
    [cancelled] = decide.on_kill_switch(switch, [state], NOW)
    assert isinstance(cancelled.outputs[0], RunCancelled)


def test_the_model_hands_work_to_an_agent_its_agent_may_hand_to() -> None:
    state = start(order_id="A-100").state
    state = replace(state, agent=state.agent.model_copy(update={"handoffs": ["support-refunds"]}))
    offered = [t["function"] for t in reason.tool_schemas(state, REGISTRY)]
    assert offered[-1]["name"] == "handoff"
    assert offered[-1]["parameters"]["properties"]["agent"]["enum"] == ["support-refunds"]
    step = answer(state, reply(("handoff", {"agent": "support-refunds", "task": "refund 20 on A-100"})))
    [handed] = step.outputs
    assert isinstance(handed, RunHandedOff)
    assert (handed.to_agent, handed.depth, handed.task) == ("support-refunds", 1, "refund 20 on A-100")
    assert handed.context["trigger"] == {"order_id": "A-100"}
    assert step.think
    assert step.state.chat is not None
    told = json.loads(step.state.chat.messages[-1]["content"])
    assert told["handed_off_to"] == "support-refunds"
    refused = answer(state, reply(("handoff", {"agent": "it-access", "task": "x"})))
    assert refused.outputs == []
    assert refused.state.chat is not None
    assert "may hand work only to support-refunds" in refused.state.chat.messages[-1]["content"]
    deep = replace(state, depth=3)
    too_deep = answer(deep, reply(("handoff", {"agent": "support-refunds", "task": "x"})))
    assert too_deep.state.chat is not None
    assert "max_handoff_depth" in too_deep.state.chat.messages[-1]["content"]


def test_a_resumed_run_answers_the_calls_left_queued_before_the_humans_words() -> None:
    state, first = proposed_after(
        start(order_id="A-100").state,
        ("lookup_order", {"order_id": "A-100"}),
        ("lookup_order", {"order_id": "A-200"}),
    )
    stopped = decide.on_outcome(rejected(first, limit="rate_agent"), state, NOW)
    assert stopped is not None
    resumed = decide.on_instruction(instructed(stopped.state, "resume", "wait a minute"), stopped.state, NOW)
    assert resumed is not None
    assert resumed.think
    assert resumed.state.chat is not None
    roles = [(m["role"], m.get("tool_call_id")) for m in resumed.state.chat.messages[-2:]]
    assert roles == [("tool", "c1"), ("tool", "c0")]
    assert resumed.state.chat.messages[-2]["content"] == "not run: the run stopped for a human first"
    assert resumed.state.chat.messages[-1]["content"] == "A human (omar) says: wait a minute"
    assert resumed.state.chat.queued == ()
