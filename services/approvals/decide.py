"""What a human's decision on a pending approval leads to.

An approval is decided once: the first decision wins, later ones change nothing. The action
that continues is the one recorded when the approval was requested, never one carried by the
decision, so a decision cannot smuggle in other parameters.
"""

from __future__ import annotations

from datetime import datetime

from charter.clock import derive_id
from charter.errors import InvalidEvent
from charter.events import (
    ActionApproved,
    ActionRejected,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    Decision,
    Event,
)

HumanDecision = ApprovalGranted | ApprovalRejected


def on_decision(
    decision: HumanDecision, request: ApprovalRequested | None, status: str, now: datetime
) -> list[Event]:
    if request is None:
        raise InvalidEvent(f"no approval {decision.approval_id} was ever requested")
    if status != "pending":
        return []
    req = request.envelope
    if isinstance(decision, ApprovalGranted):
        return [
            ActionApproved.create(
                event_id=derive_id(decision.event_id, "approved"),
                now=now,
                tenant=req.tenant,
                agent=req.agent,
                run_id=req.run_id,
                correlation_id=req.correlation_id,
                causation_id=decision.event_id,
                action=request.action,
                decision=request.decision,
                approved_by=decision.approver,
            )
        ]
    why = f"rejected by {decision.approver}" + (f": {decision.reason}" if decision.reason else "")
    return [
        ActionRejected.create(
            event_id=derive_id(decision.event_id, "rejected"),
            now=now,
            tenant=req.tenant,
            agent=req.agent,
            run_id=req.run_id,
            correlation_id=req.correlation_id,
            causation_id=decision.event_id,
            action=request.action,
            decision=Decision(
                outcome="deny",
                policy_ids=request.decision.policy_ids,
                policy_hash=request.decision.policy_hash,
                reasons=[why],
                approval_roles=request.decision.approval_roles,
            ),
            rejected_by=decision.approver,
        )
    ]
