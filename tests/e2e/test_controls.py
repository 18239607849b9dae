"""Policy controls on the real stack: live limits, the kill switch with its acknowledgements,
and revalidation of an approval after the policy changed during the wait."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from charter import signing
from charter.cli import exits
from charter.client import Client
from charter.clock import derive_id
from charter.demo import ledger
from charter.events import (
    ActionApproved,
    ActionRejected,
    DeadLettered,
    Event,
    KillSwitchSet,
    PolicyReloaded,
    RunCancelled,
    RunCompleted,
    RunEscalated,
    RunFailed,
)
from charter.killswitch import switch_event
from charter.stack import readiness
from charter.stack.processes import free_ports
from tests.e2e.conftest import (
    Stack,
    run_events,
    run_id,
    wait_approval,
    wait_approval_status,
    wait_for,
    wait_run_end,
)
from tests.factories import ACTION, DECISION

pytestmark = pytest.mark.e2e


def _refunds(stack: Stack, run: str) -> list[dict[str, object]]:
    return [
        e for e in ledger.entries(stack.settings.data_dir) if e["run_id"] == run and e["kind"] == "refund"
    ]


def _rejection(stack: Stack, run: str) -> ActionRejected:
    rejected = [e for e in run_events(stack, run, "actions.rejected") if isinstance(e, ActionRejected)]
    assert rejected, f"no rejection for run {run}"
    return rejected[-1]


def test_a_run_over_its_budget_is_denied_naming_the_limit(stack: Stack) -> None:
    trigger = stack.publish("test.budget", {"order_id": "B-1001"})
    run = run_id(trigger, "budget-tester")
    end = wait_run_end(stack, run)
    assert isinstance(end, RunFailed)
    assert "budget_per_run" in end.reason
    assert _rejection(stack, run).decision.limit == "budget_per_run"
    assert _refunds(stack, run) == []


def test_the_daily_budget_spans_runs(stack: Stack) -> None:
    ends = []
    for n in range(4):
        trigger = stack.publish("test.daily", {"order_id": f"D-{1001 + n}"})
        ends.append(wait_run_end(stack, run_id(trigger, "daily-tester")))
    assert [type(e).__name__ for e in ends] == ["RunCompleted"] * 3 + ["RunFailed"]
    assert isinstance(ends[-1], RunFailed)
    assert "budget_per_day" in ends[-1].reason


def test_the_rate_limit_stops_the_third_action_in_the_window(stack: Stack) -> None:
    ends = []
    for n in range(3):
        trigger = stack.publish("test.rate", {"order_id": f"R-{2001 + n}"})
        ends.append(wait_run_end(stack, run_id(trigger, "rate-tester")))
    assert [type(e).__name__ for e in ends] == ["RunCompleted", "RunCompleted", "RunFailed"]
    assert isinstance(ends[-1], RunFailed)
    assert "rate_agent" in ends[-1].reason


def test_a_loop_is_denied_and_the_run_escalated(stack: Stack) -> None:
    trigger = stack.publish("test.loop", {"order_id": "L-1001"})
    run = run_id(trigger, "loop-tester")
    end = wait_run_end(stack, run)
    assert isinstance(end, RunEscalated)
    assert end.cause == "loop"
    assert end.step == 2
    assert _rejection(stack, run).decision.limit == "loop"
    lookups = [c for c in ledger.calls(stack.settings.data_dir) if c["run_id"] == run]
    assert len(lookups) == 2


def test_the_kill_switch_denies_refuses_cancels_and_acknowledges(stack: Stack) -> None:
    # A run waiting for a human when the switch goes on...
    waiting = run_id(
        stack.publish("support.refund_requested", {"order_id": "W-1001", "amount": 900}), "support-refunds"
    )
    request = wait_approval(stack, waiting)
    out = stack.as_user(
        "omar", "kill-switch", "on", "--agent", "support-refunds", "--reason", "fraud investigation"
    ).stdout
    try:
        # ...the switch names the operator its token authenticated, and carries the approvals
        # service's signature,
        switch = wait_for(
            stack,
            lambda e: isinstance(e, KillSwitchSet) and e.reason == "fraud investigation" and e.active,
            "control",
        )
        assert isinstance(switch, KillSwitchSet)
        assert switch.set_by == "omar"
        assert signing.Verifier.load(stack.settings.keys, "approvals").verify(switch)
        # a forged "off" put on `control` around the API is dead-lettered, and changes nothing,
        forged = switch_event(
            agent="support-refunds", tool=None, active=False, reason="forged", set_by="omar",
            tenant="default", now=datetime.now(UTC),
        )  # fmt: skip
        asyncio.run(_send(stack, forged))
        dead = wait_for(
            stack,
            lambda e: isinstance(e, DeadLettered) and e.envelope.causation_id == forged.event_id,
            "control.dlq",
        )
        assert isinstance(dead, DeadLettered)
        assert "not signed by the approvals service" in dead.reason
        # ...every service says it applied the switch,
        for service in ("planner", "policy", "approvals", "executor", "audit"):
            assert re.search(rf"^\s+{service}\s+\S+\s+applied after \d+ ms$", out, re.MULTILINE), out
        # the waiting run is cancelled, and its approval withdrawn,
        cancelled = wait_run_end(stack, waiting)
        assert isinstance(cancelled, RunCancelled)
        assert cancelled.reason == "fraud investigation"
        # (withdrawn once the approvals service has read the run's end itself)
        wait_approval_status(stack, request.approval_id, "withdrawn")
        refused = stack.as_user("dana", "approvals", "approve", request.approval_id, check=False)
        assert refused.returncode == exits.REFUSED
        assert "withdrawn" in refused.stderr
        # a new action is denied at once,
        denied = wait_run_end(
            stack,
            run_id(
                stack.publish("support.refund_requested", {"order_id": "W-1002", "amount": 10}),
                "support-refunds",
            ),
        )
        assert isinstance(denied, RunFailed)
        assert "kill switch on for agent support-refunds" in denied.reason
        # and an approved action still queued for the executor is refused, its tool never called.
        approved = _queued_approval(stack)
        asyncio.run(_send(stack, approved))
        refusal = wait_for(
            stack, lambda e: isinstance(e, ActionRejected) and e.run_id == approved.run_id, "actions.rejected"
        )
        assert isinstance(refusal, ActionRejected)
        assert refusal.rejected_by == "kill-switch"
        assert not [c for c in ledger.calls(stack.settings.data_dir) if c["run_id"] == approved.run_id]
        # Other agents go on.
        other = stack.publish(
            "it.access_requested",
            {"user": "kim", "system": "jira", "level": "read", "environment": "production"},
        )
        assert isinstance(wait_run_end(stack, run_id(other, "it-access")), RunCompleted)
        assert "agent=support-refunds,tool=*" in stack.cli("kill-switch", "status").stdout
    finally:
        stack.as_user("omar", "kill-switch", "off", "--agent", "support-refunds", "--reason", "cleared")
    assert isinstance(
        wait_run_end(
            stack,
            run_id(
                stack.publish("support.refund_requested", {"order_id": "W-1003", "amount": 10}),
                "support-refunds",
            ),
        ),
        RunCompleted,
    )
    assert "no kill switch is on" in stack.cli("kill-switch", "status").stdout


def _queued_approval(stack: Stack) -> ActionApproved:
    """An ActionApproved as policy writes it (signed with its key), for a refund nobody has
    executed: what sits in actions.approved when the switch goes on."""
    run = derive_id(f"queued-{time.time()}", "run")
    parameters = {"order_id": "W-1004", "amount": 10, "currency": "EUR"}
    approved = ActionApproved.create(
        event_id=derive_id(run, "approved"),
        now=datetime.now(UTC),
        tenant="default",
        agent="support-refunds",
        run_id=run,
        correlation_id=run,
        action=ACTION.model_copy(update={"parameters": parameters}),
        decision=DECISION.model_copy(update={"outcome": "allow"}),
        approved_by="policy",
    )
    return signing.Signer.load(stack.settings.keys, "policy").sign(approved)


async def _send(stack: Stack, event: Event) -> None:
    async with Client(stack.settings) as client:
        await client.send(event)


def test_a_kill_switch_on_a_tool_stops_only_that_tool(stack: Stack) -> None:
    stack.cli("kill-switch", "on", "--tool", "issue_refund", "--reason", "ledger outage")
    try:
        refund = wait_run_end(
            stack,
            run_id(
                stack.publish("support.refund_requested", {"order_id": "T-1001", "amount": 10}),
                "support-refunds",
            ),
        )
        assert isinstance(refund, RunFailed)
        assert "kill switch on for tool issue_refund" in refund.reason
        # The lookup before it ran: the switch covers the tool, not the agent.
        assert isinstance(
            wait_run_end(stack, run_id(stack.publish("test.daily", {"order_id": "T-1002"}), "daily-tester")),
            RunCompleted | RunFailed,
        )
    finally:
        stack.cli("kill-switch", "off", "--tool", "issue_refund", "--reason", "ledger back")


def test_an_approval_is_decided_again_after_the_policy_changed_during_the_wait(stack: Stack) -> None:
    run = run_id(
        stack.publish("support.refund_requested", {"order_id": "V-3001", "amount": 2500}), "support-refunds"
    )
    request = wait_approval(stack, run)
    freeze = stack.policies_dir / "freeze.cedar"
    written = time.time()
    freeze.write_text(
        '@id("refund-freeze")\n@reason("refunds above 1,000 are frozen")\n'
        'forbid (principal, action == Action::"issue_refund", resource)\n'
        "when { context.parameters.amount > 1000 };\n"
    )
    try:
        wait_for(
            stack,
            lambda e: (
                isinstance(e, PolicyReloaded)
                and "refund-freeze" in e.policy_ids
                and e.envelope.occurred_at.timestamp() > written
            ),
            "control",
        )
        stack.as_user("dana", "approvals", "approve", request.approval_id)
        end = wait_run_end(stack, run)
        assert isinstance(end, RunFailed)
        rejection = _rejection(stack, run)
        assert rejection.decision.policy_ids == ["refund-freeze"]
        assert rejection.decision.previous_policy_hash == request.decision.policy_hash
        assert rejection.decision.policy_hash != request.decision.policy_hash
        assert "policy changed since approval" in rejection.decision.reasons[0]
        assert _refunds(stack, run) == []
    finally:
        freeze.unlink()


def test_limits_hold_with_two_policy_replicas_in_one_group(stack: Stack) -> None:
    """A second policy process joins the group and takes some partitions; the agent's daily
    budget, shared through the store, is still spent exactly once."""
    replica = stack.settings.model_copy(update={"instance": "replica-2"})
    log = stack.home / "logs" / "policy-replica-2.log"
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "services.policy"],
            # A replica on the same host serves its metrics on ports of its own.
            env={**stack.env, "CHARTER_INSTANCE": "replica-2", "CHARTER_METRICS_PORT": str(free_ports(5))},
            stdout=out,
            stderr=subprocess.STDOUT,
        ) as second,
    ):
        try:
            deadline = time.monotonic() + 60
            while "policy" not in readiness.ready_pids(replica):
                assert second.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
            triggers = [stack.publish("test.replica", {"order_id": f"P-{5001 + n}"}) for n in range(12)]
            ends = [wait_run_end(stack, run_id(t, "replica-tester"), timeout=60) for t in triggers]
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
    completed = [e for e in ends if isinstance(e, RunCompleted)]
    refused = [e for e in ends if isinstance(e, RunFailed) and "budget_per_day" in e.reason]
    assert (len(completed), len(refused)) == (4, 8)
    # The replica really did take part: it owned some of the proposals' partitions.
    assert re.search(r"partitions assigned: \[.*actions\.proposed", log.read_text())


def test_what_if_replays_the_audit_log_through_candidate_policies(stack: Stack, tmp_path: Path) -> None:
    for amount in (30, 80):
        trigger = stack.publish("support.refund_requested", {"order_id": "F-1001", "amount": amount})
        wait_run_end(stack, run_id(trigger, "support-refunds"))
    candidate = tmp_path / "candidate"
    shutil.copytree(stack.policies_dir, candidate)
    cedar = candidate / "refunds.cedar"
    cedar.write_text(
        cedar.read_text()
        .replace("amount <= 100 }", "amount <= 50 }")
        .replace("amount > 100 &&", "amount > 50 &&")
    )
    out = tmp_path / "diff.json"
    # The audit appends asynchronously: asked again until it holds the 80 refund's decision.
    deadline = time.monotonic() + 30
    while True:
        printed = stack.cli("policy", "what-if", str(candidate), "--out", str(out)).stdout
        if re.search(r"^allow\s+approval\s+\d+$", printed, re.MULTILINE) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert re.search(r"^allow\s+approval\s+\d+$", printed, re.MULTILINE), printed
    report = json.loads(out.read_text())
    assert report["transitions"]["allow -> approval"] >= 1
    assert all(
        c["tool"] == "issue_refund" and c["after_policies"] == ["refund-large"] for c in report["changes"]
    )
