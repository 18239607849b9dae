"""Each service's store, run on SQLite and on PostgreSQL: one contract, two databases."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from charter import agents, tools
from charter.events import ActionApproved, ApprovalRequested, Approver
from services.approvals import store as approvals
from services.approvals.decide import Pending
from services.executor import decide as executor_decide
from services.executor import store as executions
from services.planner import decide as planner_decide
from services.planner import store as runs
from tests.conftest import REPO
from tests.factories import NOW, one_of_each, trigger

AGENTS = agents.load(REPO / "agents", tools.load(["charter.demo.tools"]))
LATER = datetime(2026, 11, 22, 13, tzinfo=UTC)


def test_run_state_round_trips_and_updates(engine: Engine) -> None:
    runs.create(engine)
    [transition] = planner_decide.on_trigger(trigger(order_id="A-1001", amount=40), AGENTS, set(), NOW)
    state = transition.state
    with engine.begin() as conn:
        runs.put(conn, state, NOW)
    with engine.connect() as conn:
        assert runs.get(conn, state.run_id) == state
        assert runs.existing(conn, [state.run_id, "other"]) == {state.run_id}
        assert runs.get(conn, "missing") is None
    advanced = planner_decide.RunState(
        state.run_id,
        state.agent,
        state.trigger,
        "compensating",
        4,
        {"lookup": {"x": 1}},
        done=(planner_decide.Done(1, "order/A-1001", {"amount": 40}, {"refund_id": "rf-1"}),),
        undo=(1,),
        undone=("notify",),
        ending=planner_decide.Ending("failed", "action_failed", "boom", step=2),
    )
    with engine.begin() as conn:
        before = runs.snapshot(conn, [state.run_id])
        runs.put(conn, advanced, LATER)
    with engine.connect() as conn:
        assert runs.get(conn, state.run_id) == advanced
    # A change of status alone is a change: the planner re-decides what it thought over.
    with engine.begin() as conn:
        seen = runs.snapshot(conn, [state.run_id, "new"])
        assert seen != before
        assert seen["new"] is None
        runs.put(conn, replace(advanced, status="cancelled"), LATER)
        assert runs.snapshot(conn, [state.run_id, "new"]) != seen


def test_the_inbox_returns_the_recorded_outputs(engine: Engine) -> None:
    runs.create(engine)
    event, *outputs = one_of_each()
    with engine.begin() as conn:
        assert runs.inbox.outputs_of(conn, event.event_id) is None
        runs.inbox.record(conn, event, outputs, NOW)
    with engine.connect() as conn:
        assert runs.inbox.outputs_of(conn, event.event_id) == outputs


def test_a_runs_trace_is_the_first_kept(engine: Engine) -> None:
    runs.create(engine)
    first = [("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")]
    with engine.begin() as conn:
        assert runs.traces.of(conn, "run-1") == []
        runs.traces.keep(conn, "run-1", first)
        runs.traces.keep(conn, "run-1", [("traceparent", b"another")])  # kept already: no change
        runs.traces.keep(conn, "run-2", [])  # no trace to keep
    with engine.connect() as conn:
        assert runs.traces.of(conn, "run-1") == first
        assert runs.traces.of(conn, "run-2") == []


def test_a_rolled_back_transaction_records_nothing(engine: Engine) -> None:
    runs.create(engine)
    event = one_of_each()[0]
    try:
        with engine.begin() as conn:
            runs.inbox.record(conn, event, [], NOW)
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    with engine.connect() as conn:
        assert runs.inbox.outputs_of(conn, event.event_id) is None


def test_approvals_are_added_once_and_decided_once(engine: Engine) -> None:
    approvals.create(engine)
    request = next(e for e in one_of_each() if isinstance(e, ApprovalRequested))
    expires = NOW + timedelta(hours=24)
    with engine.begin() as conn:
        assert approvals.add(conn, request, expires)
        assert not approvals.add(conn, request, expires)
    with engine.connect() as conn:
        [pending] = approvals.listing(conn)
        assert (pending.status, pending.roles, pending.quorum) == ("pending", "finance", 2)
        assert pending.action_hash == request.action_hash
        assert approvals.pending_of(conn, request.approval_id) == Pending(request, "pending", expires, [])
        assert approvals.get(conn, request.approval_id) == pending
        assert approvals.get(conn, request.approval_id[:3]) is None
        assert approvals.listing(conn, roles=["it-security"]) == []
        assert approvals.due(conn, expires) == [
            (request.approval_id, pending.run_id, request.envelope.occurred_at)
        ]
    with engine.begin() as conn:
        common: dict[str, Any] = {"approval_id": request.approval_id, "attempted": "approve", "at": LATER}
        common["roles"] = ["finance"]
        approvals.record_decision(
            conn, decision_event_id="d1", approver="dana", outcome="counted", code=None, reason=None, **common
        )
        approvals.record_decision(
            conn, decision_event_id="d2", approver="maria", outcome="refused", code="separation_of_duties",
            reason="owner", **common,
        )  # fmt: skip
    with engine.connect() as conn:
        # Only counted approvals count toward the quorum.
        counted = approvals.pending_of(conn, request.approval_id)
        assert counted is not None
        assert counted.approvals == [Approver(user="dana", roles=["finance"])]
        refused = approvals.decision_of(conn, "d2")
        assert refused is not None
        assert refused.code == "separation_of_duties"
    with engine.begin() as conn:
        approvals.settle(conn, request.approval_id, status="approved", by="dana,lee", note=None, at=LATER)
        approvals.settle(conn, request.approval_id, status="rejected", by="eve", note=None, at=LATER)
    with engine.connect() as conn:
        assert approvals.listing(conn) == []
        [decided] = approvals.listing(conn, None)
        assert (decided.status, decided.decided_by) == ("approved", "dana,lee")
        assert approvals.pending_of(conn, "nope") is None
        assert approvals.due(conn, expires) == []
        assert approvals.counts(conn)["approved"] == 1


def test_an_execution_claim_is_held_until_it_ends_or_lapses(engine: Engine) -> None:
    executions.create(engine)
    soon, later = NOW + timedelta(seconds=30), LATER + timedelta(seconds=30)
    with engine.begin() as conn:
        assert executions.claim(conn, "run:1", "a", NOW, soon)
        assert not executions.claim(conn, "run:1", "b", NOW, soon)  # a holds it
        assert executions.claim(conn, "run:1", "a", NOW, soon)  # a restarted a takes its own back
        assert executions.claim(conn, "run:1", "b", LATER, later)  # a's lease lapsed
        assert not executions.claim(conn, "run:1", "a", LATER, later)
    approved = next(e for e in one_of_each() if isinstance(e, ActionApproved))
    key = executor_decide.idempotency_key(approved)
    with engine.begin() as conn:
        assert executions.claim(conn, key, "a", NOW, soon)
        executions.save(conn, approved, 1, NOW, executor_decide.executed(approved, {}, 1.0, 1, NOW))
        assert executions.claim(conn, key, "b", NOW, soon)  # a finished: its claim went with it


def test_executions_move_from_started_to_completed(engine: Engine) -> None:
    executions.create(engine)
    approved = next(e for e in one_of_each() if isinstance(e, ActionApproved))
    key = executor_decide.idempotency_key(approved)
    with engine.begin() as conn:
        executions.save(conn, approved, 1, NOW)
    with engine.connect() as conn:
        assert executions.get(conn, key) == executor_decide.Execution("started", 1, None)
    outcome = executor_decide.executed(approved, {"ok": True}, 1.0, 2, LATER)
    with engine.begin() as conn:
        executions.save(conn, approved, 2, LATER, outcome)
    with engine.connect() as conn:
        assert executions.get(conn, key) == executor_decide.Execution("completed", 2, outcome)


def test_a_run_that_ended_withdraws_its_pending_approvals(engine: Engine) -> None:
    approvals.create(engine)
    request = next(e for e in one_of_each() if isinstance(e, ApprovalRequested))
    with engine.begin() as conn:
        approvals.add(conn, request, NOW + timedelta(hours=1))
        approvals.withdraw(conn, request.envelope.run_id or "", "run ended: cancelled", LATER)
        approvals.settle(conn, request.approval_id, status="approved", by="dana", note=None, at=LATER)
    with engine.connect() as conn:
        [row] = approvals.listing(conn, None)
    assert (row.status, row.decided_by, row.note) == ("withdrawn", "charter", "run ended: cancelled")
