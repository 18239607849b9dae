from __future__ import annotations

import pytest

from charter.clock import new_id
from charter.errors import InvalidEvent
from charter.events import (
    ActionApproved,
    ActionRejected,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
)
from services.approvals.decide import on_decision
from tests.factories import NOW, one_of_each

REQUEST = next(e for e in one_of_each() if isinstance(e, ApprovalRequested))


def granted(approver: str = "dana") -> ApprovalGranted:
    return ApprovalGranted.create(
        event_id=new_id(),
        now=NOW,
        tenant="other",
        correlation_id="forged",
        run_id="forged-run",
        approval_id=REQUEST.approval_id,
        approver=approver,
    )


def test_a_grant_releases_the_recorded_action_not_anything_in_the_decision() -> None:
    [out] = on_decision(granted(), REQUEST, "pending", NOW)
    assert isinstance(out, ActionApproved)
    assert out.action == REQUEST.action
    assert out.approved_by == "dana"
    # Lineage comes from the request: the decision's envelope cannot move the action elsewhere.
    assert out.envelope.run_id == REQUEST.envelope.run_id
    assert out.envelope.tenant == REQUEST.envelope.tenant
    assert out.envelope.correlation_id == REQUEST.envelope.correlation_id


def test_a_rejection_ends_in_a_rejected_action_with_who_and_why() -> None:
    decision = ApprovalRejected.create(
        event_id=new_id(),
        now=NOW,
        tenant="acme",
        correlation_id="c",
        approval_id=REQUEST.approval_id,
        approver="dana",
        reason="customer is not eligible",
    )
    [out] = on_decision(decision, REQUEST, "pending", NOW)
    assert isinstance(out, ActionRejected)
    assert out.rejected_by == "dana"
    assert out.decision.outcome == "deny"
    assert out.decision.reasons == ["rejected by dana: customer is not eligible"]


@pytest.mark.parametrize("status", ["approved", "rejected"])
def test_an_approval_is_decided_once(status: str) -> None:
    assert on_decision(granted("eve"), REQUEST, status, NOW) == []


def test_an_unknown_approval_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="was ever requested"):
        on_decision(granted(), None, "unknown", NOW)


def test_outputs_are_deterministic() -> None:
    decision = granted()
    assert on_decision(decision, REQUEST, "pending", NOW) == on_decision(decision, REQUEST, "pending", NOW)
