"""A business event through all five services on the real broker: the issue's acceptance runs."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest

from charter.cli import exits
from charter.client import Client
from charter.clock import new_id
from charter.demo import ledger
from charter.events import (
    ActionApproved,
    ActionExecuted,
    ActionProposed,
    ApprovalGranted,
    ApprovalRequested,
    DeadLettered,
    Event,
    RunCompleted,
    RunFailed,
)
from tests.e2e.conftest import Stack, run_events, run_id, wait_approval, wait_for, wait_run_end

pytestmark = pytest.mark.e2e


def _refunds(stack: Stack, run: str) -> list[dict[str, object]]:
    return [
        e for e in ledger.entries(stack.settings.data_dir) if e["run_id"] == run and e["kind"] == "refund"
    ]


def test_a_small_refund_completes_with_no_human(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "S-1001", "amount": 60})
    run = run_id(trigger, "support-refunds")
    end = wait_run_end(stack, run)
    assert isinstance(end, RunCompleted)
    assert end.steps_completed == 3
    assert end.outputs["refund"]["amount"] == 60
    events = run_events(stack, run, "approvals.requested", "actions.approved")
    assert not any(isinstance(e, ApprovalRequested) for e in events)
    assert {e.approved_by for e in events if isinstance(e, ActionApproved)} == {"policy"}
    [refund] = _refunds(stack, run)
    assert refund["effect"]["amount"] == 60  # type: ignore[index]


def test_a_large_refund_waits_is_approved_through_the_cli_and_executes_once(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "S-2002", "amount": 2400})
    run = run_id(trigger, "support-refunds")
    request = wait_approval(stack, run)
    assert request.decision.approval_roles == ["finance"]
    assert _refunds(stack, run) == []

    listed = stack.as_user("dana", "approvals", "list").stdout
    assert request.approval_id[:8] in listed
    assert "finance" in listed

    out = stack.as_user("dana", "approvals", "approve", request.approval_id[:8], "--comment", "checked")
    assert "approved by dana" in out.stdout
    end = wait_run_end(stack, run)
    assert isinstance(end, RunCompleted)

    # A second decision on the same approval changes nothing: the API refuses it...
    again = stack.as_user("lee", "approvals", "approve", request.approval_id[:8], check=False)
    assert again.returncode == exits.REFUSED
    assert "is already approved" in again.stderr
    assert "HTTP 409 not_pending" in again.stderr

    # ...and the service dead-letters a decision published around the API, unsigned.
    forged = ApprovalGranted.create(
        event_id=new_id(),
        now=datetime.now(UTC),
        tenant=stack.settings.tenant,
        run_id=run,
        correlation_id=request.approval_id,
        approval_id=request.approval_id,
        approver="mallory",
        action_hash=request.action_hash,
        approver_roles=["finance"],
    )
    asyncio.run(_send(stack, forged))
    dead = wait_for(
        stack,
        lambda e: isinstance(e, DeadLettered) and forged.event_id in e.reason,
        "approvals.decided.dlq",
    )
    assert isinstance(dead, DeadLettered)
    assert "not signed by the approvals service" in dead.reason
    approved = [
        e
        for e in run_events(stack, run, "actions.approved")
        if isinstance(e, ActionApproved) and e.action.tool == "issue_refund"
    ]
    # Dana's approval, then policy's revalidation of it, signed by policy.
    assert [(e.approved_by, e.revalidated) for e in approved] == [("dana", False), ("dana", True)]
    assert approved[1].signature
    executed = [e for e in run_events(stack, run, "actions.results") if isinstance(e, ActionExecuted)]
    assert [e.action.tool for e in executed].count("issue_refund") == 1
    assert len(_refunds(stack, run)) == 1


async def _send(stack: Stack, event: Event) -> None:
    async with Client(stack.settings) as client:
        await client.send(event)


def test_a_rejected_approval_ends_the_run_without_executing(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "S-3003", "amount": 800})
    run = run_id(trigger, "support-refunds")
    request = wait_approval(stack, run)
    stack.as_user("dana", "approvals", "reject", request.approval_id, "--reason", "not eligible")
    end = wait_run_end(stack, run)
    assert isinstance(end, RunFailed)
    assert end.cause == "action_rejected"
    assert "not eligible" in end.reason
    assert _refunds(stack, run) == []


def test_a_forbidden_action_is_rejected_and_its_tool_never_runs(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "S-4004", "amount": 9000})
    run = run_id(trigger, "support-refunds")
    end = wait_run_end(stack, run)
    assert isinstance(end, RunFailed)
    assert "refund-over-limit" in end.reason
    assert _refunds(stack, run) == []
    proposed = [e for e in run_events(stack, run, "actions.proposed") if isinstance(e, ActionProposed)]
    assert [p.action.tool for p in proposed] == ["lookup_order", "issue_refund"]
    executed = [
        e.action.tool for e in run_events(stack, run, "actions.results") if isinstance(e, ActionExecuted)
    ]
    assert executed == ["lookup_order"]


def test_production_admin_access_is_denied_and_read_access_granted(stack: Stack) -> None:
    read = stack.publish(
        "it.access_requested", {"user": "kim", "system": "wiki", "level": "read", "environment": "production"}
    )
    admin = stack.publish(
        "it.access_requested", {"user": "kim", "system": "erp", "level": "admin", "environment": "production"}
    )
    assert isinstance(wait_run_end(stack, run_id(read, "it-access")), RunCompleted)
    denied = wait_run_end(stack, run_id(admin, "it-access"))
    assert isinstance(denied, RunFailed)
    assert "no-production-admin" in denied.reason
    grants = [e for e in ledger.entries(stack.settings.data_dir) if e["run_id"] == run_id(admin, "it-access")]
    assert grants == []


def test_run_show_and_runs_read_the_timeline_from_the_audit_store(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "S-5005", "amount": 15})
    run = run_id(trigger, "support-refunds")
    wait_run_end(stack, run)
    # The audit service appends asynchronously; give it the moment it needs.
    deadline = time.monotonic() + 30
    while "RunCompleted" not in (shown := stack.cli("run", "show", run[:8], check=False).stdout):
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert "status completed" in shown
    for kind in ("RunStarted", "ActionProposed", "ActionApproved", "ActionExecuted"):
        assert kind in shown
    assert run[:8] in stack.cli("runs").stdout
    agents = {a["id"]: a for a in map(json.loads, stack.cli("agents", "--json").stdout.splitlines())}
    refunds = agents["support-refunds"]
    assert refunds["tools"]["issue_refund"]["uses"] >= 1
    assert "issue_refund" in refunds["used"]
    assert "issue_refund" not in refunds["unused"]


def test_a_tool_that_fails_ends_the_run_as_failed_with_its_error(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "Z-1001", "amount": 20})
    end = wait_run_end(stack, run_id(trigger, "support-refunds"))
    assert isinstance(end, RunFailed)
    assert end.cause == "action_failed"
    assert "no order Z-1001" in end.reason
    assert end.failed_step == 0
