"""What a human's decision on a pending approval leads to, and what its expiry does.

An approval is bound to one exact action (charter.binding): a decision counts only if it names
that binding, comes from someone holding a role the policy named, who is neither the agent's
owner, nor whoever submitted the run's business event, nor whoever edited the action's
parameters (separation of duties), before the approval expires, while it is still pending, and
from a person who has not already counted. Anything else is refused, with the reason, as an
`ApprovalRefused` event. When as many distinct people as policy asked for have approved, the
action continues; one rejection ends it. Approving with edited parameters supersedes the
approval with a new proposal, which policy decides again. An approval nobody decides in time
is rejected, never approved, and its run escalated.

The action that continues is always the one recorded with the request, never one carried by a
decision; run, tenant and agent are the request's whatever the decision's envelope says.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from charter.clock import derive_id
from charter.errors import InvalidEvent
from charter.events import (
    Action,
    ActionApproved,
    ActionProposed,
    ActionRejected,
    ApprovalAmended,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRefused,
    ApprovalRejected,
    ApprovalRequested,
    Approver,
    Decision,
    Event,
)

HumanDecision = ApprovalGranted | ApprovalRejected | ApprovalAmended
SamePerson = Callable[[str, str], bool]


@dataclass(frozen=True)
class Pending:
    """What the approvals service knows of one approval when a decision on it arrives."""

    request: ApprovalRequested
    status: str
    expires_at: datetime
    approvals: Sequence[Approver] = ()


@dataclass(frozen=True)
class Verdict:
    outputs: list[Event]
    status: str | None = None  # the approval's new status, if it changed
    counted: Approver | None = None  # an approval that counts toward the quorum
    refused: ApprovalRefused | None = None
    decided_by: list[str] = field(default_factory=list)


def attempted(decision: HumanDecision) -> str:
    match decision:
        case ApprovalGranted():
            return "approve"
        case ApprovalRejected():
            return "reject"
    return "amend"


def on_decision(
    decision: HumanDecision, pending: Pending | None, now: datetime, same_person: SamePerson
) -> Verdict:
    if pending is None:
        raise InvalidEvent(f"no approval {decision.approval_id} was ever requested")
    refusal = _refusal(decision, pending, same_person)
    if refusal is not None:
        code, reason = refusal
        refused = ApprovalRefused.caused_by(
            decision,
            lineage=pending.request,
            label="refused",
            now=now,
            approval_id=decision.approval_id,
            approver=decision.approver,
            attempted=attempted(decision),
            code=code,
            reason=reason,
            decision_event_id=decision.event_id,
        )
        return Verdict([refused], refused=refused)
    request = pending.request
    if isinstance(decision, ApprovalRejected):
        return _rejected(decision, request, now)
    if isinstance(decision, ApprovalAmended):
        return _amended(decision, request, now)
    me = Approver(user=decision.approver, roles=_qualifying(decision, request))
    approvers = [*pending.approvals, me]
    if len(approvers) < request.decision.approvals_required:
        return Verdict([], counted=me)
    approved = ActionApproved.caused_by(
        decision,
        lineage=request,
        label="approved",
        now=now,
        action=request.action,
        decision=request.decision,
        approved_by=",".join(a.user for a in approvers),
        approval_id=request.approval_id,
        approvers=approvers,
    )
    return Verdict([approved], status="approved", counted=me, decided_by=[a.user for a in approvers])


def on_expired(expired: ApprovalExpired, pending: Pending | None, now: datetime) -> Verdict:
    """Reject the action of an approval still pending past its deadline; else nothing."""
    if pending is None:
        raise InvalidEvent(f"no approval {expired.approval_id} was ever requested")
    if pending.status != "pending" or expired.envelope.occurred_at < pending.expires_at:
        return Verdict([])
    request = pending.request
    roles = " or ".join(request.decision.approval_roles)
    waited = pending.expires_at - request.envelope.occurred_at
    reason = (
        f"approval expired after {_duration(waited.total_seconds())} without a decision by {roles}; "
        "nothing is ever approved by default"
    )
    rejected = _rejection(
        expired, request, now, label="expired", reason=reason, by="charter", limit="approval_expired"
    )
    return Verdict([rejected], status="expired", decided_by=["charter"])


def _refusal(decision: HumanDecision, pending: Pending, same_person: SamePerson) -> tuple[str, str] | None:
    """Why this decision may not count, if it may not: (code, one-line reason)."""
    request = pending.request
    if pending.status != "pending":
        return "not_pending", f"approval {request.approval_id[:8]} is already {pending.status}"
    if decision.envelope.occurred_at >= pending.expires_at:
        return "expired", f"approval {request.approval_id[:8]} expired at {pending.expires_at.isoformat()}"
    if decision.action_hash != request.action_hash:
        return "binding_mismatch", (
            f"the decision is bound to another action ({(decision.action_hash or 'none')[:12]}), "
            f"not to this one ({(request.action_hash or 'none')[:12]}) (tool, parameters, run, step, policy)"
        )
    if not _qualifying(decision, request):
        roles = " or ".join(request.decision.approval_roles)
        return "wrong_role", f"{decision.approver} does not hold the role policy named ({roles})"
    if isinstance(decision, ApprovalAmended):
        retargeted = _retargeted(request.action, decision.parameters)
        if retargeted:
            return "invalid_amendment", (
                f"an amendment may not change {', '.join(retargeted)}: it names the target "
                f"{request.action.resource}; reject the action instead"
            )
    if not isinstance(decision, ApprovalRejected):
        conflict = _conflict(decision, request, same_person)
        if conflict:
            return "separation_of_duties", f"{decision.approver} {conflict}, so may not approve it"
    if any(same_person(a.user, decision.approver) for a in pending.approvals):
        return (
            "duplicate_approver",
            f"{decision.approver} has already approved; a quorum needs distinct people",
        )
    return None


def _conflict(decision: HumanDecision, request: ApprovalRequested, same_person: SamePerson) -> str | None:
    me = [decision.approver, *([decision.approver_email] if decision.approver_email else [])]

    def mine(name: str | None) -> bool:
        return name is not None and any(same_person(who, name) for who in me)

    if mine(request.agent_owner):
        return f"owns the agent {request.envelope.agent}"
    if mine(request.triggered_by):
        return "submitted the business event that started the run"
    if mine(request.amended_by):
        return "edited this action's parameters"
    return None


def _retargeted(action: Action, parameters: dict[str, object]) -> list[str]:
    """The parameters an amendment changes that name the action's target: policy decided the
    target from the resource, so it may not move under an approval."""
    segments = set(re.split(r"[/:]", action.resource))
    return sorted(
        name
        for name, old in action.parameters.items()
        if isinstance(old, str | int) and str(old) in segments and parameters.get(name) != old
    )


def _qualifying(decision: HumanDecision, request: ApprovalRequested) -> list[str]:
    return sorted(set(decision.approver_roles) & set(request.decision.approval_roles))


def _rejected(decision: ApprovalRejected, request: ApprovalRequested, now: datetime) -> Verdict:
    why = f"rejected by {decision.approver}" + (f": {decision.reason}" if decision.reason else "")
    out = _rejection(decision, request, now, label="rejected", reason=why, by=decision.approver)
    return Verdict([out], status="rejected", decided_by=[decision.approver])


def _rejection(
    cause: Event,
    request: ApprovalRequested,
    now: datetime,
    *,
    label: str,
    reason: str,
    by: str,
    limit: str | None = None,
) -> ActionRejected:
    """The requested action, rejected for `reason` by `by`."""
    update: dict[str, Any] = {"outcome": "deny", "reasons": [reason]}
    if limit is not None:
        update["limit"] = limit
    decision = Decision.model_validate(request.decision.model_copy(update=update).model_dump())
    return ActionRejected.caused_by(
        cause, lineage=request, label=label, now=now, action=request.action, decision=decision, rejected_by=by
    )


def _amended(decision: ApprovalAmended, request: ApprovalRequested, now: datetime) -> Verdict:
    """The same step with the approver's parameters, proposed anew: policy decides it again."""
    old = request.action
    action = Action(
        action_id=derive_id(request.approval_id, f"amended:{decision.event_id}"),
        step_index=old.step_index,
        step_id=old.step_id,
        tool=old.tool,
        resource=old.resource,
        parameters=decision.parameters,
        environment=old.environment,
    )
    proposed = ActionProposed.caused_by(
        decision,
        lineage=request,
        label="amended",
        now=now,
        action=action,
        triggered_by=request.triggered_by,
        amended_by=decision.approver,
        amends=request.approval_id,
    )
    return Verdict([proposed], status="amended", decided_by=[decision.approver])


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
