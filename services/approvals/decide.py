"""What a human's decision on a pending approval leads to.

An approval is decided once: the first decision wins, later ones change nothing. The action
that continues is the one recorded when the approval was requested, never one carried by the
decision, so a decision cannot smuggle in other parameters; and the run, tenant and agent are
the request's, whatever the decision's envelope says.
"""

from __future__ import annotations

from datetime import datetime

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
    if isinstance(decision, ApprovalGranted):
        return [
            ActionApproved.caused_by(
                decision,
                lineage=request,
                label="approved",
                now=now,
                action=request.action,
                decision=request.decision,
                approved_by=decision.approver,
            )
        ]
    why = f"rejected by {decision.approver}" + (f": {decision.reason}" if decision.reason else "")
    rejected = request.decision.model_copy(update={"outcome": "deny", "reasons": [why]})
    return [
        ActionRejected.caused_by(
            decision,
            lineage=request,
            label="rejected",
            now=now,
            action=request.action,
            decision=Decision.model_validate(rejected.model_dump()),
            rejected_by=decision.approver,
        )
    ]
