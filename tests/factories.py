"""Realistic events of every type, for tests that need one of each."""

from __future__ import annotations

from datetime import UTC, datetime

from charter import events as ev
from charter.clock import derive_id, new_id

NOW = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)
RUN = derive_id("trigger-1", "run:support-refunds")

ACTION = ev.Action(
    action_id=derive_id(RUN, "action:1"),
    step_index=1,
    step_id="refund",
    tool="issue_refund",
    resource="order/A-1001",
    parameters={"order_id": "A-1001", "amount": 250, "currency": "EUR", "reason": "late"},
    environment="production",
)
DECISION = ev.Decision(
    outcome="approval",
    policy_ids=["refund-large"],
    policy_hash="ab" * 32,
    reasons=["permitted by refund-large with approval by finance"],
    approval_roles=["finance"],
    limit=None,
    previous_policy_hash="cd" * 32,
    approvals_required=2,
)


def trigger(name: str = "support.refund_requested", **data: object) -> ev.TriggerReceived:
    """A fresh business event, as a business system would publish it."""
    event_id = new_id()
    return ev.TriggerReceived.create(
        event_id=event_id,
        now=NOW,
        tenant="acme",
        correlation_id=event_id,
        name=name,
        data=data,
        source="test",
    )


def _env(cls: type[ev.Event]) -> dict[str, object]:
    return {
        "event_id": derive_id(RUN, cls.__name__),
        "now": NOW,
        "tenant": "acme",
        "agent": "support-refunds",
        "run_id": RUN,
        "correlation_id": "trigger-1",
        "causation_id": "trigger-1",
    }


def one_of_each() -> list[ev.Event]:
    payloads: dict[type[ev.Event], dict[str, object]] = {
        ev.TriggerReceived: {
            "name": "support.refund_requested",
            "data": {"order_id": "A-1001", "amount": 250.5},
            "source": "cli",
            "submitted_by": "kim",
        },
        ev.RunStarted: {
            "agent_owner": "maria@example.com",
            "trigger_event_id": "trigger-1",
            "trigger_name": "support.refund_requested",
            "environment": "production",
            "steps": 3,
            "triggered_by": "kim",
        },
        ev.RunCompleted: {
            "steps_completed": 3,
            "outputs": {"lookup": {"currency": "EUR"}},
            "llm_tokens": 1200,
            "llm_cost": 0.5,
        },
        ev.RunFailed: {"cause": "action_rejected", "reason": "rejected by policy", "failed_step": 1},
        ev.RunCancelled: {"cause": "kill_switch", "reason": "fraud investigation", "switch_id": "ks-1"},
        ev.RunEscalated: {
            "cause": "loop",
            "reason": "issue_refund proposed 3 times",
            "step": 4,
            "llm_tokens": 300,
            "llm_cost": 0.1,
            "context": {"tool": "issue_refund"},
        },
        ev.RunInstructed: {"command": "resume", "instruction": "refund 20 only", "instructed_by": "omar"},
        ev.RunHandedOff: {
            "to_agent": "it-access",
            "context": {"user": "kim"},
            "depth": 1,
            "task": "grant read access",
            "triggered_by": "kim",
        },
        ev.RunWaiting: {"step": 2, "event_name": "payment.settled", "key": "A-1001", "timeout_s": 3600.0},
        ev.WaitExpired: {"step": 2, "event_name": "payment.settled", "key": "A-1001"},
        ev.ActionProposed: {
            "action": ACTION,
            "llm_tokens": 812,
            "llm_cost": 0.25,
            "triggered_by": "kim",
            "amended_by": "lee",
            "amends": "ap-0",
        },
        ev.ActionApproved: {
            "action": ACTION,
            "decision": DECISION,
            "approved_by": "dana,lee",
            "revalidated": True,
            "approval_id": "ap-1",
            "approvers": [
                ev.Approver(user="dana", roles=["finance"]),
                ev.Approver(user="lee", roles=["finance"]),
            ],
            "signature": "c2lnbmVk",
        },
        ev.ActionRejected: {"action": ACTION, "decision": DECISION, "rejected_by": "policy"},
        ev.ApprovalRequested: {
            "approval_id": "ap-1",
            "action": ACTION,
            "decision": DECISION,
            "action_hash": "ef" * 32,
            "agent_owner": "maria@example.com",
            "triggered_by": "kim",
            "amended_by": None,
        },
        ev.ApprovalGranted: {
            "approval_id": "ap-1",
            "approver": "dana",
            "approver_email": "dana@example.com",
            "comment": "ok",
            "action_hash": "ef" * 32,
            "approver_roles": ["finance"],
            "signature": "c2lnbmVk",
        },
        ev.ApprovalRejected: {
            "approval_id": "ap-1",
            "approver": "dana",
            "reason": None,
            "action_hash": "ef" * 32,
            "approver_roles": ["finance"],
            "signature": None,
        },
        ev.ApprovalAmended: {
            "approval_id": "ap-1",
            "approver": "lee",
            "parameters": {"order_id": "A-1001", "amount": 200, "currency": "EUR", "reason": "late"},
            "comment": "partial refund",
            "action_hash": "ef" * 32,
            "approver_roles": ["finance"],
            "signature": "c2lnbmVk",
        },
        ev.ApprovalExpired: {"approval_id": "ap-1", "requested_at": NOW, "signature": "c2lnbmVk"},
        ev.ApprovalRefused: {
            "approval_id": "ap-1",
            "approver": "maria",
            "attempted": "approve",
            "code": "separation_of_duties",
            "reason": "maria owns the agent support-refunds",
            "decision_event_id": "ev-1",
        },
        ev.ActionExecuted: {
            "action": ACTION,
            "idempotency_key": f"{RUN}:1",
            "result": {"refund_id": "rf-1"},
            "duration_ms": 1.5,
            "attempts": 1,
        },
        ev.ActionFailed: {
            "action": ACTION,
            "idempotency_key": f"{RUN}:1",
            "error": "timed out",
            "error_type": "Timeout",
            "in_doubt": False,
            "attempts": 3,
        },
        ev.CheckpointSigned: {
            "size": 1000,
            "root": "ab" * 32,
            "signed_at_us": 1_700_000_000_000_000,
            "key_id": "cd" * 32,
            "signature": "c2ln",
        },
        ev.ToolUnavailable: {
            "action": ACTION,
            "idempotency_key": f"{RUN}:1",
            "failures": 5,
            "retry_after_s": 29.5,
            "reason": "circuit open after 5 transient failures",
        },
        ev.DeadLettered: {
            "source_topic": "charter.triggers",
            "source_partition": 0,
            "source_offset": 7,
            "key": b"k",
            "value": b"\x00\xff",
            "reason": "not Avro",
            "error_type": "UndecodableRecord",
            "service": "planner",
        },
        ev.KillSwitchSet: {
            "switch_id": "ks-1",
            "scope_agent": "support-refunds",
            "scope_tool": None,
            "active": True,
            "reason": "fraud",
            "set_by": "ops",
        },
        ev.KillSwitchAcknowledged: {
            "switch_id": "ks-1",
            "active": True,
            "service": "policy",
            "instance": "host-1",
        },
        ev.PolicyReloaded: {
            "policy_hash": "cd" * 32,
            "policy_ids": ["a", "b"],
            "files": ["x.cedar"],
            "valid": True,
            "error": None,
            "sources": {"x.cedar": "permit(principal, action, resource);"},
        },
    }
    return [cls.create(**_env(cls), **payload) for cls, payload in payloads.items()]  # type: ignore[arg-type]
