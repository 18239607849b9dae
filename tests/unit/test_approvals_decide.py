"""The approvals service's rules, as pure decisions: who may approve what, how many, until when."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from charter.binding import action_hash
from charter.clock import derive_id, new_id
from charter.errors import InvalidEvent
from charter.events import (
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
)
from charter.identity.users import Directory, User
from services.approvals.decide import HumanDecision, Pending, on_decision, on_expired
from tests.factories import ACTION, DECISION, NOW, RUN

DIRECTORY = Directory(
    [
        User(id="dana", email="dana@example.com", roles=["finance"]),
        User(id="lee", email="lee@example.com", roles=["finance"]),
        User(id="maria", email="maria@example.com", roles=["finance", "support"]),
        User(id="kim", email="kim@example.com", roles=["finance"]),
        User(id="priya", email="priya@example.com", roles=["it-security"]),
    ]
)
SAME = DIRECTORY.same_person
EXPIRES = NOW + timedelta(hours=24)


def request(quorum: int = 1, **extra: Any) -> ApprovalRequested:
    decision = DECISION.model_copy(update={"approvals_required": quorum, "previous_policy_hash": None})
    return ApprovalRequested.create(
        event_id=derive_id(RUN, "requested"),
        now=NOW,
        tenant="acme",
        agent="support-refunds",
        run_id=RUN,
        correlation_id="trigger-1",
        approval_id="ap-1",
        action=ACTION,
        decision=decision,
        action_hash=action_hash(ACTION, RUN, decision.policy_hash),
        agent_owner="maria@example.com",
        triggered_by="kim",
        **extra,
    )


def pending(
    req: ApprovalRequested | None = None, status: str = "pending", approvals: tuple[Approver, ...] = ()
) -> Pending:
    return Pending(req or request(), status, EXPIRES, approvals)


def decision(
    kind: type[HumanDecision] = ApprovalGranted,
    approver: str = "dana",
    roles: tuple[str, ...] = ("finance",),
    at_hours: float = 1,
    bound_to: str | None = None,
    **fields: Any,
) -> HumanDecision:
    req = request()
    return kind.create(
        event_id=new_id(),
        now=NOW + timedelta(hours=at_hours),
        tenant="other",
        correlation_id="forged",
        run_id="forged-run",
        approval_id="ap-1",
        approver=approver,
        approver_roles=list(roles),
        action_hash=bound_to if bound_to is not None else req.action_hash,
        **fields,
    )


def refusal(verdict_outputs: list[Any]) -> ApprovalRefused:
    [out] = verdict_outputs
    assert isinstance(out, ApprovalRefused)
    return out


def test_a_grant_releases_the_recorded_action_not_anything_in_the_decision() -> None:
    verdict = on_decision(decision(), pending(), NOW, SAME)
    [out] = verdict.outputs
    assert isinstance(out, ActionApproved)
    assert verdict.status == "approved"
    assert out.action == ACTION
    assert out.approved_by == "dana"
    assert out.approval_id == "ap-1"
    assert out.approvers == [Approver(user="dana", roles=["finance"])]
    # Lineage comes from the request: the decision's envelope cannot move the action elsewhere.
    assert out.envelope.run_id == RUN
    assert out.envelope.tenant == "acme"
    assert out.envelope.correlation_id == "trigger-1"


def test_a_rejection_ends_in_a_rejected_action_with_who_and_why() -> None:
    verdict = on_decision(decision(ApprovalRejected, reason="customer is not eligible"), pending(), NOW, SAME)
    [out] = verdict.outputs
    assert isinstance(out, ActionRejected)
    assert verdict.status == "rejected"
    assert out.rejected_by == "dana"
    assert out.decision.outcome == "deny"
    assert out.decision.reasons == ["rejected by dana: customer is not eligible"]


@pytest.mark.parametrize(
    ("made", "code", "fragment"),
    [
        # Forged: a person without the role policy named.
        (lambda: decision(approver="priya", roles=("it-security",)), "wrong_role", "does not hold the role"),
        # Forged: the token carried no approver role at all.
        (lambda: decision(roles=()), "wrong_role", "finance"),
        # Self-approval: the agent's owner, named by e-mail on the agent, by id on the token.
        (lambda: decision(approver="maria"), "separation_of_duties", "owns the agent"),
        # ... and by e-mail as authenticated, for people known only to the identity provider.
        (
            lambda: decision(approver="mlopez", approver_email="maria@example.com"),
            "separation_of_duties",
            "owns the agent",
        ),
        # Self-approval: whoever submitted the business event that started the run.
        (lambda: decision(approver="kim"), "separation_of_duties", "submitted the business event"),
        # An approval reused for another action (another run, step or policy: another binding).
        (
            lambda: decision(bound_to=action_hash(ACTION, "another-run", DECISION.policy_hash)),
            "binding_mismatch",
            "another action",
        ),
        # An approval bound to different parameters.
        (
            lambda: decision(
                bound_to=action_hash(
                    ACTION.model_copy(update={"parameters": {**ACTION.parameters, "amount": 4999}}),
                    RUN,
                    DECISION.policy_hash,
                )
            ),
            "binding_mismatch",
            "another action",
        ),
        # A decision that names no binding at all.
        (lambda: decision(bound_to=""), "binding_mismatch", "another action"),
        # Too late: decided after the approval expired.
        (lambda: decision(at_hours=25), "expired", "expired"),
    ],
)
def test_a_decision_that_may_not_count_is_refused_with_its_reason(
    made: Any, code: str, fragment: str
) -> None:
    verdict = on_decision(made(), pending(), NOW, SAME)
    refused = refusal(verdict.outputs)
    assert (refused.code, verdict.status) == (code, None)
    assert fragment in refused.reason
    assert verdict.refused == refused
    assert refused.envelope.run_id == RUN


def test_the_owner_may_still_reject_their_own_agents_action() -> None:
    verdict = on_decision(
        decision(ApprovalRejected, approver="maria", reason="wrong customer"), pending(), NOW, SAME
    )
    assert isinstance(verdict.outputs[0], ActionRejected)


def test_whoever_edited_the_parameters_may_not_approve_the_edited_action() -> None:
    edited = pending(request(amended_by="lee"))
    refused = refusal(on_decision(decision(approver="lee"), edited, NOW, SAME).outputs)
    assert refused.code == "separation_of_duties"
    assert "edited" in refused.reason


@pytest.mark.parametrize("status", ["approved", "rejected", "expired", "withdrawn", "amended"])
def test_an_approval_decides_once(status: str) -> None:
    refused = refusal(on_decision(decision(), pending(status=status), NOW, SAME).outputs)
    assert refused.code == "not_pending"
    assert status in refused.reason


def test_a_quorum_needs_that_many_distinct_people() -> None:
    two = pending(request(quorum=2))
    first = on_decision(decision(approver="dana"), two, NOW, SAME)
    assert first.outputs == []
    assert first.status is None
    assert first.counted == Approver(user="dana", roles=["finance"])
    after_one = pending(request(quorum=2), approvals=(first.counted,))
    # The same person again (by e-mail this time) does not count twice.
    again = on_decision(decision(approver="dana@example.com"), after_one, NOW, SAME)
    assert refusal(again.outputs).code == "duplicate_approver"
    second = on_decision(decision(approver="lee"), after_one, NOW, SAME)
    [out] = second.outputs
    assert isinstance(out, ActionApproved)
    assert second.status == "approved"
    assert out.approved_by == "dana,lee"
    assert [a.user for a in out.approvers] == ["dana", "lee"]


def test_one_rejection_ends_a_quorum_approval() -> None:
    after_one = pending(request(quorum=2), approvals=(Approver(user="dana", roles=["finance"]),))
    verdict = on_decision(decision(ApprovalRejected, approver="lee"), after_one, NOW, SAME)
    assert isinstance(verdict.outputs[0], ActionRejected)
    assert verdict.status == "rejected"


def test_approving_with_edited_parameters_is_a_new_proposal_for_the_same_step() -> None:
    edited = {**ACTION.parameters, "amount": 200}
    verdict = on_decision(
        decision(ApprovalAmended, parameters=edited, comment="partial"), pending(), NOW, SAME
    )
    [out] = verdict.outputs
    assert isinstance(out, ActionProposed)
    assert verdict.status == "amended"
    assert out.action.parameters == edited
    assert (out.action.step_index, out.action.tool, out.action.resource) == (
        ACTION.step_index,
        ACTION.tool,
        ACTION.resource,
    )
    assert out.action.action_id != ACTION.action_id
    assert (out.amended_by, out.amends, out.triggered_by) == ("dana", "ap-1", "kim")
    assert out.envelope.run_id == RUN


def test_an_edit_may_not_move_the_action_to_another_target() -> None:
    moved = {**ACTION.parameters, "order_id": "B-9999"}
    refused = refusal(on_decision(decision(ApprovalAmended, parameters=moved), pending(), NOW, SAME).outputs)
    assert refused.code == "invalid_amendment"
    assert "order_id" in refused.reason


def test_a_decision_on_an_approval_never_requested_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="was ever requested"):
        on_decision(decision(), None, NOW, SAME)


def expired(at: Any) -> ApprovalExpired:
    req = request()
    return ApprovalExpired.caused_by(
        req, lineage=req, event_id=derive_id("ap-1", "expired"), now=at, approval_id="ap-1", requested_at=NOW
    )


def test_an_expired_approval_rejects_its_action_and_never_approves_it() -> None:
    verdict = on_expired(expired(EXPIRES + timedelta(seconds=1)), pending(), EXPIRES)
    [out] = verdict.outputs
    assert isinstance(out, ActionRejected)
    assert verdict.status == "expired"
    assert out.rejected_by == "charter"
    assert out.decision.limit == "approval_expired"
    assert "24.0 h" in out.decision.reasons[0]
    assert "nothing is ever approved by default" in out.decision.reasons[0]


def test_an_expiry_before_the_deadline_or_after_a_decision_does_nothing() -> None:
    assert on_expired(expired(EXPIRES - timedelta(seconds=1)), pending(), NOW).outputs == []
    assert on_expired(expired(EXPIRES), pending(status="approved"), NOW).outputs == []
