"""Policy decides only proposals signed by who alone may send them (services.policy.decide.forged)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from charter.signing import Signer
from services.policy.decide import Context, forged
from tests.unit.test_policy import AGENTS, APPROVALS, APPROVALS_KEY, BUNDLE, TOOLS, refund

PLANNER = Signer(Ed25519PrivateKey.generate())
CTX = Context(BUNDLE, AGENTS, TOOLS, approvals_key=APPROVALS_KEY, planner_key=PLANNER.verifier)


def test_a_proposal_the_planner_signed_is_genuine() -> None:
    assert forged(PLANNER.sign(refund(40)), CTX) is None


def test_an_unsigned_proposal_is_forged() -> None:
    reason = forged(refund(40), CTX)
    assert reason is not None
    assert "is not signed" in reason
    assert "'support-refunds'" in reason


def test_a_proposal_changed_after_signing_is_forged() -> None:
    signed = PLANNER.sign(refund(40))
    changed = signed.model_copy(update={"action": refund(4000).action})
    reason = forged(changed, CTX)
    assert reason is not None
    assert "does not verify against the planner's key" in reason


def test_a_proposal_signed_by_another_key_is_forged() -> None:
    other = Signer(Ed25519PrivateKey.generate())
    assert forged(other.sign(refund(40)), CTX) is not None
    # Nor may the approvals service propose as the planner: its key covers amendments only.
    assert forged(APPROVALS.sign(refund(40)), CTX) is not None


def test_without_the_planners_key_nothing_is_genuine() -> None:
    assert forged(PLANNER.sign(refund(40)), Context(BUNDLE, AGENTS, TOOLS)) is not None


def test_an_amended_proposal_must_be_signed_by_the_approvals_service() -> None:
    amended = refund(40).model_copy(update={"amended_by": "dana", "amends": "appr-1"})
    assert forged(APPROVALS.sign(amended), CTX) is None
    reason = forged(PLANNER.sign(amended), CTX)
    assert reason is not None
    assert "claims to be amended by 'dana'" in reason
