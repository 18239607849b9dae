from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from charter import agents, tools
from charter.agents import Agent
from charter.clock import new_id
from charter.errors import InvalidEvent
from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRejected,
    Decision,
    KillSwitchSet,
    RunCancelled,
    RunCompleted,
    RunEscalated,
    RunFailed,
    RunHandedOff,
    RunInstructed,
    RunStarted,
    RunWaiting,
    ToolUnavailable,
    TriggerReceived,
)
from charter.killswitch import switch_id
from services.planner import coordinate, decide
from tests.conftest import REPO
from tests.factories import trigger

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
AGENTS = agents.load(REPO / "agents", tools.load(["charter.demo.tools"]))


def start(t: TriggerReceived) -> decide.Transition:
    [transition] = decide.on_trigger(t, AGENTS, set(), NOW)
    return transition


def executed(state: decide.RunState, proposed: ActionProposed, result: dict[str, object]) -> ActionExecuted:
    return ActionExecuted.caused_by(
        proposed,
        label="x",
        now=NOW,
        action=proposed.action,
        idempotency_key="k",
        result=result,
        duration_ms=1.0,
        attempts=1,
    )


def test_a_matching_trigger_starts_a_run_and_proposes_the_first_step() -> None:
    t = trigger(order_id="A-1", amount=40)
    transition = start(t)
    started, proposed = transition.outputs
    assert isinstance(started, RunStarted)
    assert isinstance(proposed, ActionProposed)
    assert started.envelope.agent == "support-refunds"
    assert started.envelope.causation_id == t.event_id
    assert proposed.envelope.run_id == started.envelope.run_id == transition.state.run_id
    assert proposed.envelope.correlation_id == t.envelope.correlation_id
    assert proposed.action.tool == "lookup_order"
    assert proposed.action.parameters == {"order_id": "A-1"}
    assert proposed.action.resource == "order/A-1"


def test_a_submitter_only_claimed_is_recorded_as_a_claim_and_never_trusted() -> None:
    t = trigger(order_id="A-1", amount=40).model_copy(update={"submitted_by": "dana"})
    [claimed] = decide.on_trigger(t, AGENTS, set(), NOW, proven=False)
    started, proposed = claimed.outputs
    assert isinstance(started, RunStarted)
    assert isinstance(proposed, ActionProposed)
    assert (started.triggered_by, started.submitter_claimed) == (None, "dana")
    # What separation of duties reads carries no submitter: the claim cannot sway it.
    assert proposed.triggered_by is None
    assert claimed.state.trigger.submitted_by is None
    [signed] = decide.on_trigger(t, AGENTS, set(), NOW, proven=True)
    started, proposed = signed.outputs
    assert isinstance(started, RunStarted)
    assert isinstance(proposed, ActionProposed)
    assert (started.triggered_by, started.submitter_claimed, proposed.triggered_by) == ("dana", None, "dana")


def test_a_run_names_the_data_subject_its_trigger_names() -> None:
    t = trigger(order_id="A-1", amount=40, customer={"customer_id": "cust-7"})
    [named] = decide.on_trigger(t, AGENTS, set(), NOW, subject_fields=("customer_id", "subject_id"))
    assert isinstance(started := named.outputs[0], RunStarted)
    assert started.subject == "cust-7"
    assert isinstance(unnamed := start(trigger(order_id="A-1", amount=40)).outputs[0], RunStarted)
    assert unnamed.subject is None


def test_the_same_trigger_never_starts_the_same_agent_twice() -> None:
    t = trigger(order_id="A-1", amount=40)
    run_id = start(t).state.run_id
    assert decide.on_trigger(t, AGENTS, {run_id}, NOW) == []


def test_outputs_are_deterministic_for_a_redelivered_input() -> None:
    t = trigger(order_id="A-1", amount=40)
    assert start(t).outputs == start(t).outputs


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("support.refund_requested", {"order_id": "A-1", "amount": 0}),
        ("unknown.event", {}),
    ],
)
def test_triggers_that_match_no_agent_start_nothing(name: str, data: dict[str, object]) -> None:
    assert decide.on_trigger(trigger(name, **data), AGENTS, set(), NOW) == []


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"order_id": "A-1", "amount": "five"}, "'>' not supported between instances of 'str' and 'int'"),
        ({"order_id": "A-1"}, "has no attribute 'amount'"),
    ],
)
def test_a_trigger_a_filter_cannot_evaluate_is_refused_with_the_agent_and_the_filter(
    data: dict[str, object], error: str
) -> None:
    t = trigger("support.refund_requested", **data)
    with pytest.raises(InvalidEvent) as refused:
        decide.on_trigger(t, AGENTS, set(), NOW)
    reason = str(refused.value)
    assert reason.startswith("agent support-refunds: filter 'trigger.amount > 0' cannot be evaluated: ")
    assert error in reason


def _listening(agent_id: str, when: str) -> Agent:
    rule = agents.TriggerRule(event="support.refund_requested", when=when)
    return AGENTS["support-refunds"].model_copy(update={"id": agent_id, "triggers": [rule]})


def test_a_trigger_one_filter_cannot_evaluate_starts_no_agent_even_where_another_matches() -> None:
    # Starting the agent that matches and dropping the other would look like success.
    crew = {**AGENTS, "by-order": _listening("by-order", "trigger.order_id.startswith('A')")}
    with pytest.raises(InvalidEvent, match=r"agent support-refunds: filter 'trigger\.amount > 0'"):
        decide.on_trigger(trigger(order_id="A-1", amount="five"), crew, set(), NOW)
    # The same trigger with data both filters can evaluate starts both.
    both = decide.on_trigger(trigger(order_id="A-1", amount=5), crew, set(), NOW)
    assert sorted(t.state.agent.id for t in both) == ["by-order", "support-refunds"]


def test_an_agent_one_of_whose_rules_holds_starts_though_another_rule_cannot_be_evaluated() -> None:
    refunds = AGENTS["support-refunds"]
    rules = [*refunds.triggers, agents.TriggerRule(event="support.refund_requested", when="true")]
    crew = {refunds.id: refunds.model_copy(update={"triggers": rules})}
    [transition] = decide.on_trigger(trigger(order_id="A-1", amount="five"), crew, set(), NOW)
    assert transition.state.agent.id == "support-refunds"


def test_results_feed_the_next_step_then_the_run_completes() -> None:
    transition = start(trigger(order_id="A-1", amount=40))
    state, proposed = transition.state, transition.outputs[1]
    assert isinstance(proposed, ActionProposed)
    results: list[dict[str, object]] = [
        {"customer": "c-1", "currency": "EUR", "order_id": "A-1", "total": 1},
        {"refund_id": "rf-1"},
        {"delivered": True},
    ]
    for index, result in enumerate(results):
        step = decide.on_outcome(executed(state, proposed, result), state, NOW)
        assert step is not None
        state = step.state
        if index < 2:
            [nxt] = step.outputs
            assert isinstance(nxt, ActionProposed)
            proposed = nxt
        else:
            [done] = step.outputs
            assert isinstance(done, RunCompleted)
            assert done.steps_completed == 3
            assert done.outputs["refund"] == {"refund_id": "rf-1"}
            assert state.status == "completed"
    # The second step was templated from the trigger and the first step's result.
    assert state.results["lookup"]["currency"] == "EUR"


def test_step_two_parameters_come_from_step_one() -> None:
    transition = start(trigger(order_id="A-1", amount=40))
    proposed = transition.outputs[1]
    assert isinstance(proposed, ActionProposed)
    step = decide.on_outcome(
        executed(transition.state, proposed, {"currency": "SEK", "customer": "c"}), transition.state, NOW
    )
    assert step is not None
    [nxt] = step.outputs
    assert isinstance(nxt, ActionProposed)
    assert nxt.action.parameters == {
        "order_id": "A-1",
        "amount": 40,
        "currency": "SEK",
        "reason": "customer request",
    }


def test_a_stale_or_duplicate_outcome_changes_nothing() -> None:
    transition = start(trigger(order_id="A-1", amount=40))
    proposed = transition.outputs[1]
    assert isinstance(proposed, ActionProposed)
    first = decide.on_outcome(
        executed(transition.state, proposed, {"currency": "EUR", "customer": "c"}), transition.state, NOW
    )
    assert first is not None
    # The same step's result again, against the advanced state: ignored.
    assert (
        decide.on_outcome(
            executed(first.state, proposed, {"currency": "EUR", "customer": "c"}), first.state, NOW
        )
        is None
    )
    assert decide.on_outcome(executed(first.state, proposed, {}), None, NOW) is None


def test_a_rejected_action_fails_the_run_with_the_reason() -> None:
    transition = start(trigger(order_id="A-1", amount=40))
    proposed = transition.outputs[1]
    assert isinstance(proposed, ActionProposed)
    decision = Decision(
        outcome="deny", policy_ids=["p"], policy_hash="h", reasons=["forbidden by p"], approval_roles=[]
    )
    rejected = ActionRejected.caused_by(
        proposed, label="policy", now=NOW, action=proposed.action, decision=decision, rejected_by="policy"
    )
    step = decide.on_outcome(rejected, transition.state, NOW)
    assert step is not None
    [failed] = step.outputs
    assert isinstance(failed, RunFailed)
    assert failed.cause == "action_rejected"
    assert "forbidden by p" in failed.reason
    assert step.state.status == "failed"


def test_a_failed_action_fails_the_run() -> None:
    transition = start(trigger(order_id="A-1", amount=40))
    proposed = transition.outputs[1]
    assert isinstance(proposed, ActionProposed)
    step = decide.on_outcome(_failed(proposed), transition.state, NOW)
    assert step is not None
    [failed] = step.outputs
    assert isinstance(failed, RunFailed)
    assert failed.cause == "action_failed"
    assert failed.failed_step == 0


def test_a_template_that_cannot_render_fails_the_run_as_a_plan_error() -> None:
    agent = Agent.model_validate(
        {
            "id": "t",
            "owner": "o",
            "description": "d",
            "environment": "staging",
            "triggers": [{"event": "e"}],
            "tools": ["lookup_order"],
            "steps": [{"id": "s", "tool": "lookup_order", "parameters": {"order_id": "{{ trigger.nope }}"}}],
        }
    )
    [transition] = decide.on_trigger(trigger("e"), {"t": agent}, set(), NOW)
    started, failed = transition.outputs
    assert isinstance(started, RunStarted)
    assert isinstance(failed, RunFailed)
    assert failed.cause == "plan_error"
    assert transition.state.status == "failed"


def _switch(active: bool = True, agent: str | None = None, tool: str | None = None) -> KillSwitchSet:
    return KillSwitchSet.create(
        event_id=new_id(),
        now=NOW,
        tenant="ops",
        correlation_id="switch",
        switch_id=switch_id(agent, tool),
        scope_agent=agent,
        scope_tool=tool,
        active=active,
        reason="fraud",
        set_by="ops",
    )


def test_a_kill_switch_cancels_the_runs_it_covers() -> None:
    refund = start(trigger(order_id="A-1", amount=40)).state
    access = start(
        trigger("it.access_requested", user="sam", system="wiki", level="read", environment="production")
    ).state
    [cancelled] = decide.on_kill_switch(_switch(agent="support-refunds"), [refund, access], NOW)
    assert cancelled.state.run_id == refund.run_id
    assert cancelled.state.status == "cancelled"
    [event] = cancelled.outputs
    assert isinstance(event, RunCancelled)
    assert event.switch_id == "agent=support-refunds,tool=*"
    # The run's own lineage, caused by the switch.
    assert event.envelope.correlation_id == refund.trigger.envelope.correlation_id
    assert event.envelope.tenant == refund.trigger.envelope.tenant
    assert event.run_id == refund.run_id


def test_a_tool_switch_cancels_only_runs_with_that_tool_ahead() -> None:
    refund = start(trigger(order_id="A-1", amount=40)).state
    past_refund = decide.RunState(refund.run_id, refund.agent, refund.trigger, "running", 2, {})
    assert decide.on_kill_switch(_switch(tool="issue_refund"), [refund], NOW)
    assert not decide.on_kill_switch(_switch(tool="issue_refund"), [past_refund], NOW)


def test_a_switch_turned_off_or_a_finished_run_cancels_nothing() -> None:
    refund = start(trigger(order_id="A-1", amount=40)).state
    assert decide.on_kill_switch(_switch(active=False), [refund], NOW) == []
    done = decide.RunState(refund.run_id, refund.agent, refund.trigger, "completed", 3, {})
    assert decide.on_kill_switch(_switch(), [done], NOW) == []


def test_a_loop_escalates_the_run_rather_than_failing_it() -> None:
    transition = start(trigger(order_id="A-1", amount=40))
    proposed = transition.outputs[1]
    assert isinstance(proposed, ActionProposed)
    decision = Decision(
        outcome="deny", policy_ids=[], policy_hash="h", reasons=["loop: ..."], approval_roles=[], limit="loop"
    )
    rejected = ActionRejected.caused_by(
        proposed, label="policy", now=NOW, action=proposed.action, decision=decision, rejected_by="policy"
    )
    step = decide.on_outcome(rejected, transition.state, NOW)
    assert step is not None
    [escalated] = step.outputs
    assert isinstance(escalated, RunEscalated)
    assert (escalated.cause, escalated.step) == ("loop", 0)
    assert step.state.status == "escalated"


def _failed(proposed: ActionProposed, *, in_doubt: bool = False) -> ActionFailed:
    return ActionFailed.caused_by(
        proposed,
        label="x",
        now=NOW,
        action=proposed.action,
        idempotency_key="k",
        error="boom",
        error_type="E",
        in_doubt=in_doubt,
        attempts=1,
    )


def _at_refund() -> tuple[decide.Transition, ActionProposed]:
    """A refund run whose lookup took effect; the refund is proposed."""
    transition = start(trigger(order_id="A-1", amount=40))
    lookup = transition.outputs[1]
    assert isinstance(lookup, ActionProposed)
    order = {"order_id": "A-1", "customer": "cust-1", "currency": "EUR", "total": 100}
    after_lookup = decide.on_outcome(executed(transition.state, lookup, order), transition.state, NOW)
    assert after_lookup is not None
    [refund] = after_lookup.outputs
    assert isinstance(refund, ActionProposed)
    return after_lookup, refund


def _through_refund() -> tuple[decide.RunState, ActionProposed]:
    """A refund run whose lookup and refund took effect; the notify step is proposed."""
    after_lookup, refund = _at_refund()
    refunded = {"refund_id": "rf-0123456789", "order_id": "A-1", "amount": 40, "currency": "EUR"}
    after_refund = decide.on_outcome(executed(after_lookup.state, refund, refunded), after_lookup.state, NOW)
    assert after_refund is not None
    [notify] = after_refund.outputs
    assert isinstance(notify, ActionProposed)
    return after_refund.state, notify


def test_a_run_that_fails_after_side_effects_compensates_them_before_it_fails() -> None:
    state, notify = _through_refund()
    compensating = decide.on_outcome(_failed(notify), state, NOW)
    assert compensating is not None
    assert compensating.state.status == "compensating"
    [undo] = compensating.outputs  # no RunFailed yet: first the refund is undone
    assert isinstance(undo, ActionProposed)
    assert undo.action.tool == "cancel_refund"
    assert undo.action.compensates == "refund"
    assert undo.action.step_index == 3  # numbered after the playbook's three steps
    assert undo.action.parameters == {"refund_id": "rf-0123456789", "order_id": "A-1"}
    assert undo.action.resource == "order/A-1"
    cancelled = {"refund_id": "rf-0123456789", "cancelled": True}
    ended = decide.on_outcome(executed(compensating.state, undo, cancelled), compensating.state, NOW)
    assert ended is not None
    [failed] = ended.outputs
    assert isinstance(failed, RunFailed)
    assert failed.cause == "action_failed"
    assert failed.failed_step == 2
    assert "undone: refund" in failed.reason
    assert ended.state.status == "failed"


def test_compensations_run_last_step_first() -> None:
    agent = Agent.model_validate(
        {
            "id": "saga",
            "owner": "o@example.com",
            "description": "three undoable steps",
            "environment": "production",
            "triggers": [{"event": "support.refund_requested"}],
            "tools": ["issue_refund", "cancel_refund", "notify_customer"],
            "steps": [
                {"id": f"r{i}", "tool": "issue_refund", "parameters": {"order_id": "A-1", "amount": i}}
                for i in (1, 2, 3)
            ]
            + [{"id": "tell", "tool": "notify_customer", "parameters": {"customer": "c", "message": "m"}}],
        }
    )
    agent = agents.with_compensations(agent, tools.load(["charter.demo.tools"]))
    [transition] = decide.on_trigger(trigger(order_id="A-1", amount=1), {"saga": agent}, set(), NOW)
    state, proposed = transition.state, transition.outputs[1]
    for i in (1, 2, 3):
        assert isinstance(proposed, ActionProposed)
        result: dict[str, object] = {"refund_id": f"rf-000000000{i}", "order_id": "A-1", "amount": i}
        step = decide.on_outcome(executed(state, proposed, result), state, NOW)
        assert step is not None
        state, proposed = step.state, step.outputs[0]
    assert isinstance(proposed, ActionProposed)
    undoing = decide.on_outcome(_failed(proposed), state, NOW)
    order = []
    while undoing is not None and undoing.state.status == "compensating":
        [undo] = undoing.outputs
        assert isinstance(undo, ActionProposed)
        order.append((undo.action.compensates, undo.action.parameters["refund_id"]))
        state = undoing.state
        undoing = decide.on_outcome(executed(state, undo, {"refund_id": "x", "cancelled": True}), state, NOW)
    assert order == [("r3", "rf-0000000003"), ("r2", "rf-0000000002"), ("r1", "rf-0000000001")]
    assert undoing is not None
    assert isinstance(undoing.outputs[0], RunFailed)
    assert "undone: r3, r2, r1" in undoing.outputs[0].reason


def test_a_compensation_that_fails_escalates_to_a_human() -> None:
    state, notify = _through_refund()
    compensating = decide.on_outcome(_failed(notify), state, NOW)
    assert compensating is not None
    [undo] = compensating.outputs
    assert isinstance(undo, ActionProposed)
    ended = decide.on_outcome(_failed(undo), compensating.state, NOW)
    assert ended is not None
    [escalated] = ended.outputs
    assert isinstance(escalated, RunEscalated)
    assert escalated.cause == "compensation_failed"
    assert "undoing step refund did not succeed: boom" in escalated.reason
    # A human cancels it: the undo is proposed again, under new ids; nothing undone is redone.
    cancelled = decide.on_instruction(_instructed(ended.state, "cancel"), ended.state, NOW)
    assert cancelled is not None
    [again] = cancelled.outputs
    assert isinstance(again, ActionProposed)
    assert again.action.compensates == "refund"
    assert again.event_id != undo.event_id
    assert again.action.action_id != undo.action.action_id
    done = decide.on_outcome(executed(cancelled.state, again, {"ok": True}), cancelled.state, NOW)
    assert done is not None
    [end] = done.outputs
    assert isinstance(end, RunCancelled)
    assert end.reason == "cancelled by omar: try again (undone: refund)"


def test_a_kill_switch_compensates_before_it_cancels() -> None:
    state, _notify = _through_refund()
    [transition] = decide.on_kill_switch(_switch(tool="notify_customer"), [state], NOW)
    [undo] = transition.outputs
    assert isinstance(undo, ActionProposed)
    assert undo.action.tool == "cancel_refund"
    assert undo.envelope.correlation_id == state.trigger.envelope.correlation_id
    cancelled = {"refund_id": "rf-0123456789", "cancelled": True}
    ended = decide.on_outcome(executed(transition.state, undo, cancelled), transition.state, NOW)
    assert ended is not None
    [event] = ended.outputs
    assert isinstance(event, RunCancelled)
    assert event.cause == "kill_switch"


def test_an_in_doubt_action_escalates_with_its_evidence() -> None:
    state, notify = _through_refund()
    step = decide.on_outcome(_failed(notify, in_doubt=True), state, NOW)
    assert step is not None
    [escalated] = step.outputs  # not compensated: whether the message went out is the question
    assert isinstance(escalated, RunEscalated)
    assert escalated.cause == "in_doubt"
    assert "idempotency key k" in escalated.reason


def test_an_unavailable_tool_escalates_the_run() -> None:
    state, notify = _through_refund()
    down = ToolUnavailable.caused_by(
        notify,
        label="x",
        now=NOW,
        action=notify.action,
        idempotency_key="k",
        failures=5,
        retry_after_s=30.0,
        reason="circuit open",
    )
    step = decide.on_outcome(down, state, NOW)
    assert step is not None
    [escalated] = step.outputs
    assert isinstance(escalated, RunEscalated)
    assert escalated.cause == "tool_unavailable"


def test_a_switch_on_a_later_tool_waits_for_the_step_under_way_and_undoes_it_too() -> None:
    step, refund = _at_refund()  # the refund is under way when notify_customer is switched off
    [waiting] = decide.on_kill_switch(_switch(tool="notify_customer"), [step.state], NOW)
    assert waiting.outputs == []
    assert waiting.state.status == "cancelling"
    refunded = {"refund_id": "rf-0123456789", "order_id": "A-1", "amount": 40, "currency": "EUR"}
    late = decide.on_outcome(executed(waiting.state, refund, refunded), waiting.state, NOW)
    assert late is not None
    [undo] = late.outputs
    assert isinstance(undo, ActionProposed)
    assert undo.action.compensates == "refund"
    ended = decide.on_outcome(
        executed(late.state, undo, {"refund_id": "x", "cancelled": True}), late.state, NOW
    )
    assert ended is not None
    [cancelled] = ended.outputs
    assert isinstance(cancelled, RunCancelled)
    assert "undone: refund" in cancelled.reason


def test_a_switch_on_the_step_under_way_cancels_at_once() -> None:
    state, _notify = _through_refund()
    [transition] = decide.on_kill_switch(_switch(), [state], NOW)  # the whole agent: nothing more runs
    [undo] = transition.outputs
    assert isinstance(undo, ActionProposed)
    assert transition.state.status == "compensating"


BRANCHING = agents.with_compensations(
    Agent.model_validate(
        {
            "id": "branching",
            "owner": "o",
            "description": "d",
            "environment": "production",
            "triggers": [{"event": "support.refund_requested"}],
            "tools": ["lookup_order", "issue_refund", "notify_customer", "cancel_refund"],
            "steps": [
                {
                    "id": "lookup",
                    "tool": "lookup_order",
                    "parameters": {"order_id": "{{ trigger.order_id }}"},
                },
                {
                    "id": "refund",
                    "tool": "issue_refund",
                    "when": "steps.lookup.total >= trigger.amount",
                    "parameters": {"order_id": "{{ trigger.order_id }}", "amount": "{{ trigger.amount }}"},
                    "expect": "result.amount == trigger.amount",
                },
                {
                    "id": "apologise",
                    "tool": "notify_customer",
                    "when": "steps.lookup.total < trigger.amount",
                    "parameters": {"customer": "{{ steps.lookup.customer }}", "message": "sorry"},
                },
            ],
        }
    ),
    tools.load(["charter.demo.tools"]),
)


def _branching(amount: int, total: int) -> decide.Transition:
    t = trigger(order_id="A-100", amount=amount)
    [first] = decide.on_trigger(t, {"branching": BRANCHING}, set(), NOW)
    lookup = first.outputs[1]
    assert isinstance(lookup, ActionProposed)
    order = {"order_id": "A-100", "customer": "cust-1", "currency": "EUR", "total": total}
    after = decide.on_outcome(executed(first.state, lookup, order), first.state, NOW)
    assert after is not None
    return after


def test_a_condition_on_an_earlier_result_chooses_the_branch() -> None:
    [refund] = _branching(amount=40, total=100).outputs
    assert isinstance(refund, ActionProposed)
    assert refund.action.step_id == "refund"
    over = _branching(amount=400, total=100)
    [apology] = over.outputs
    assert isinstance(apology, ActionProposed)
    assert (apology.action.step_id, apology.action.step_index) == ("apologise", 2)
    done = decide.on_outcome(executed(over.state, apology, {"delivered": True}), over.state, NOW)
    assert done is not None
    [completed] = done.outputs
    assert isinstance(completed, RunCompleted)
    assert completed.steps_completed == 2  # the refund was skipped


def test_a_verification_step_fails_the_run_and_undoes_what_did_not_check_out() -> None:
    after = _branching(amount=40, total=100)
    [refund] = after.outputs
    assert isinstance(refund, ActionProposed)
    wrong = {"refund_id": "rf-1", "order_id": "A-100", "amount": 4, "currency": "EUR"}
    checked = decide.on_outcome(executed(after.state, refund, wrong), after.state, NOW)
    assert checked is not None
    [undo] = checked.outputs
    assert isinstance(undo, ActionProposed)
    assert (undo.action.tool, undo.action.compensates) == ("cancel_refund", "refund")
    assert undo.action.parameters["refund_id"] == "rf-1"
    assert checked.state.status == "compensating"
    assert checked.state.ending is not None
    assert checked.state.ending.cause == "verification_failed"
    assert "result.amount == trigger.amount" in checked.state.ending.reason


def _instructed(state: decide.RunState, command: str) -> RunInstructed:
    return RunInstructed.create(
        event_id=new_id(), now=NOW, tenant="acme", correlation_id="c", run_id=state.run_id,
        command=command, instruction="try again", instructed_by="omar",
    )  # fmt: skip


def test_a_human_resumes_an_escalated_playbook_run_at_its_step_under_new_ids() -> None:
    transition = start(trigger(order_id="A-100", amount=40))
    proposed = transition.outputs[1]
    assert isinstance(proposed, ActionProposed)
    stopped = decide.on_outcome(_failed(proposed, in_doubt=True), transition.state, NOW)
    assert stopped is not None
    assert stopped.state.status == "escalated"
    resumed = decide.on_instruction(_instructed(stopped.state, "resume"), stopped.state, NOW)
    assert resumed is not None
    [again] = resumed.outputs
    assert isinstance(again, ActionProposed)
    assert again.action.step_index == proposed.action.step_index
    assert again.action.action_id != proposed.action.action_id
    assert again.event_id != proposed.event_id
    assert resumed.state.status == "running"
    # Only an escalated run is resumed.
    assert decide.on_instruction(_instructed(resumed.state, "resume"), resumed.state, NOW) is None


def test_a_human_resuming_a_run_escalated_while_cancelling_resumes_the_cancel() -> None:
    step, refund = _at_refund()
    [cancelling] = decide.on_kill_switch(_switch(tool="notify_customer"), [step.state], NOW)
    assert cancelling.state.status == "cancelling"
    stopped = decide.on_outcome(_failed(refund, in_doubt=True), cancelling.state, NOW)
    assert stopped is not None
    assert stopped.state.status == "escalated"
    resumed = decide.on_instruction(_instructed(stopped.state, "resume"), stopped.state, NOW)
    assert resumed is not None
    [end] = resumed.outputs
    assert isinstance(end, RunCancelled)  # not the refund's work again: the cancel it was in
    assert end.cause == "kill_switch"
    assert resumed.state.status == "cancelled"


def test_a_human_cancelling_a_run_undoes_what_it_did() -> None:
    state, _ = _through_refund()
    cancelled = decide.on_instruction(_instructed(state, "cancel"), state, NOW)
    assert cancelled is not None
    # The notification under way may still take effect, but it cannot be undone: the refund is.
    [undo] = cancelled.outputs
    assert isinstance(undo, ActionProposed)
    assert undo.action.tool == "cancel_refund"
    assert cancelled.state.ending is not None
    assert cancelled.state.ending.cause == "human"


TEST_AGENTS = agents.load(REPO / "tests" / "e2e" / "agents", tools.load(["charter.demo.tools"]))


def _handed_off(order_id: str = "H-100") -> tuple[decide.Transition, RunHandedOff]:
    t = trigger("test.handoff", order_id=order_id)
    [first] = decide.on_trigger(t, TEST_AGENTS, set(), NOW)
    lookup = first.outputs[1]
    assert isinstance(lookup, ActionProposed)
    order = {"order_id": order_id, "customer": "cust-1", "currency": "EUR", "total": 100}
    after = decide.on_outcome(executed(first.state, lookup, order), first.state, NOW)
    assert after is not None
    handed, completed = after.outputs
    assert isinstance(handed, RunHandedOff)
    assert isinstance(completed, RunCompleted)
    return after, handed


def test_a_handoff_starts_one_run_of_the_other_agent_in_the_same_correlation() -> None:
    _, handed = _handed_off()
    assert (handed.to_agent, handed.depth, handed.context) == (
        "settle-waiter",
        1,
        {"order_id": "H-100", "customer": "cust-1"},
    )
    [started] = decide.on_handoff(handed, TEST_AGENTS, set(), NOW)
    begun, waiting = started.outputs
    assert isinstance(begun, RunStarted)
    assert isinstance(waiting, RunWaiting)
    assert begun.envelope.correlation_id == handed.envelope.correlation_id
    assert begun.envelope.causation_id == handed.event_id
    assert started.state.depth == 1
    assert started.state.status == "waiting"
    assert (waiting.event_name, waiting.key, waiting.timeout_s) == ("test.settled", "H-100", 120.0)
    assert decide.on_handoff(handed, TEST_AGENTS, {started.state.run_id}, NOW) == []


def _waiting() -> decide.RunState:
    _, handed = _handed_off()
    [started] = decide.on_handoff(handed, TEST_AGENTS, set(), NOW)
    return started.state


def test_the_awaited_event_with_the_runs_key_moves_it_on() -> None:
    state = _waiting()
    assert decide.on_signal(trigger("test.settled", order_id="H-999"), state, NOW) is None
    assert decide.on_signal(trigger("test.other", order_id="H-100"), state, NOW) is None
    signal = trigger("test.settled", order_id="H-100", amount=5)
    moved = decide.on_signal(signal, state, NOW)
    assert moved is not None
    [check] = moved.outputs
    assert isinstance(check, ActionProposed)
    assert check.envelope.causation_id == signal.event_id
    assert check.envelope.correlation_id == state.trigger.envelope.correlation_id
    assert moved.state.results["settled"] == {"order_id": "H-100", "amount": 5}
    assert moved.state.status == "running"


@pytest.mark.parametrize(
    ("on_timeout", "outcome"), [("continue", ActionProposed), ("fail", RunFailed), ("escalate", RunEscalated)]
)
def test_a_wait_that_runs_out_goes_on_fails_or_escalates(on_timeout: str, outcome: type) -> None:
    state = _waiting()
    step = state.agent.steps[0]
    assert step.wait is not None
    wait = step.wait.model_copy(update={"on_timeout": on_timeout})
    steps = [step.model_copy(update={"wait": wait}), *state.agent.steps[1:]]
    state = replace(state, agent=state.agent.model_copy(update={"steps": steps}))
    expired = coordinate.expired(state, NOW)
    moved = decide.on_wait_expired(expired, state, NOW)
    assert moved is not None
    assert isinstance(moved.outputs[0], outcome)
    # The timer's report of a wait already over changes nothing.
    assert decide.on_wait_expired(expired, moved.state, NOW) is None


def test_a_handoff_past_the_depth_limit_escalates() -> None:
    relay = TEST_AGENTS["relay-tester"]
    t = trigger("test.relay", n=1)
    state = decide.start_run(t, relay, NOW, depth=2)
    [escalated] = state.outputs[1:]
    assert isinstance(escalated, RunEscalated)
    assert escalated.cause == "max_handoff_depth"
    at_one = decide.start_run(t, relay, NOW, depth=1)
    assert isinstance(at_one.outputs[1], RunHandedOff)
