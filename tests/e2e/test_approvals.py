"""Approvals through the HTTP API on the real stack: who may decide, what a decision is bound
to, quorum, deadlines, amendments, and tokens. Every refusal here is the approvals service's
own, taken from the authenticated caller; nothing in a request body names the approver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from charter.binding import action_hash
from charter.events import (
    ActionApproved,
    ActionProposed,
    ActionRejected,
    ApprovalRequested,
    PolicyReloaded,
    RunCompleted,
    RunEscalated,
)
from tests.e2e.conftest import (
    Stack,
    run_events,
    run_id,
    wait_approval,
    wait_for,
    wait_pending,
    wait_run_end,
)

pytestmark = pytest.mark.e2e
REFUNDS = "support-refunds"


def api(stack: Stack, user: str | None, *roles: str) -> httpx.Client:
    """The API as `user` (None: no credentials at all)."""
    headers = {"Authorization": f"Bearer {stack.token(user, *roles)}"} if user else {}
    return httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)


def call(stack: Stack, user: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with api(stack, user) as client:
        return client.request(method, path, **kwargs)


def approve(stack: Stack, user: str, approval_id: str, binding: str, **body: Any) -> httpx.Response:
    return call(
        stack, user, "POST", f"/v1/approvals/{approval_id}/approve", json={"action_hash": binding, **body}
    )


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def publish_as(stack: Stack, user: str, order: str, amount: int) -> str:
    """A refund request sent through the API; returns its run's id."""
    sent = call(
        stack,
        user,
        "POST",
        "/v1/events",
        json={"name": "support.refund_requested", "data": {"order_id": order, "amount": amount}},
    )
    assert sent.status_code == 202, sent.text
    assert sent.json()["submitted_by"] == user
    return run_id(sent.json()["event_id"], REFUNDS)


@contextmanager
def policy(stack: Stack, name: str, text: str) -> Iterator[None]:
    """A policy file added to the stack's set for the duration, once the policy service has
    loaded it (and taken out again afterwards)."""
    path = stack.policies_dir / name

    def reloaded(since: float, present: bool) -> None:
        wait_for(
            stack,
            lambda e: (
                isinstance(e, PolicyReloaded)
                and e.valid
                and any(i.startswith("test-") for i in e.policy_ids) == present
                and e.envelope.occurred_at.timestamp() > since
            ),
            "control",
        )

    written = time.time()
    path.write_text(text)
    reloaded(written, True)
    try:
        yield
    finally:
        removed = time.time()
        path.unlink()
        reloaded(removed, False)


def test_only_an_authorised_person_can_approve_and_only_the_action_they_saw(stack: Stack) -> None:
    run = publish_as(stack, "noor", "A-1001", 2400)
    request = wait_approval(stack, run)
    other = wait_approval(stack, publish_as(stack, "sam", "A-1002", 700))
    binding = request.action_hash
    assert binding
    assert other.action_hash

    # The trigger is shown from the audit log, once it has read it (another topic).
    deadline = time.monotonic() + 30
    while (detail := call(stack, "dana", "GET", f"/v1/approvals/{request.approval_id}").json())[
        "trigger"
    ] is None:
        assert time.monotonic() < deadline, detail
        time.sleep(0.3)
    assert detail["approval"]["action_hash"] == binding
    assert detail["trigger"]["data"] == {"order_id": "A-1001", "amount": 2400}
    assert detail["triggered_by"] == "noor"
    assert "refund-large" in detail["policy_ids"]

    # Holding some approver role is not enough: the policy named finance.
    assert error_of(approve(stack, "priya", request.approval_id, binding)) == (403, "wrong_role")
    # The agent's owner (by email: the agent file names maria.lopez@example.com) may not.
    assert error_of(approve(stack, "maria", request.approval_id, binding)) == (403, "separation_of_duties")
    # Whoever triggered the run may not, though noor holds finance.
    assert error_of(approve(stack, "noor", request.approval_id, binding)) == (403, "separation_of_duties")
    # A decision bound to another action, or to other parameters, is not this approval.
    assert error_of(approve(stack, "dana", request.approval_id, other.action_hash)) == (
        409,
        "binding_mismatch",
    )
    tampered = request.action.model_copy(update={"parameters": {**request.action.parameters, "amount": 24}})
    forged = action_hash(tampered, run, request.decision.policy_hash)
    assert error_of(approve(stack, "dana", request.approval_id, forged)) == (409, "binding_mismatch")
    # An auditor may read, not decide.
    assert error_of(approve(stack, "ada", request.approval_id, binding)) == (403, "forbidden")

    decisions = call(stack, "dana", "GET", f"/v1/approvals/{request.approval_id}").json()["decisions"]
    assert [(d["approver"], d["code"]) for d in decisions] == [
        ("priya", "wrong_role"),
        ("maria", "separation_of_duties"),
        ("noor", "separation_of_duties"),
        ("dana", "binding_mismatch"),
        ("dana", "binding_mismatch"),
    ]
    assert call(stack, "dana", "GET", f"/v1/approvals/{request.approval_id}").json()["approval"][
        "status"
    ] == ("pending")

    granted = approve(stack, "dana", request.approval_id, binding, comment="checked")
    assert granted.status_code == 200, granted.text
    assert granted.json()["approval"]["status"] == "approved"
    assert isinstance(wait_run_end(stack, run), RunCompleted)
    # Used once: the same approval cannot be spent again.
    assert error_of(approve(stack, "lee", request.approval_id, binding)) == (409, "not_pending")
    executable = [
        e
        for e in run_events(stack, run, "actions.approved")
        if isinstance(e, ActionApproved) and e.action.tool == "issue_refund" and e.revalidated
    ]
    assert [[a.user for a in e.approvers] for e in executable] == [["dana"]]

    assert approve(stack, "lee", other.approval_id, other.action_hash).status_code == 200


def test_tokens_that_are_missing_revoked_or_out_of_scope_do_nothing(stack: Stack) -> None:
    run = publish_as(stack, "sam", "A-2001", 650)
    request = wait_approval(stack, run)
    binding = request.action_hash
    assert binding
    path = f"/v1/approvals/{request.approval_id}/approve"
    for headers in ({}, {"Authorization": "Bearer chr_nope_nope"}, {"Authorization": "Basic ZGFuYTp4"}):
        refused = httpx.post(stack.api_url + path, json={"action_hash": binding}, headers=headers)
        assert error_of(refused) == (401, "unauthenticated")

    # Revoked: it stops working at once.
    issued = stack.cli("tokens", "create", "--user", "lee", "--description", "to revoke").stdout
    token_id, secret = issued.split()[1], issued.strip().splitlines()[-1]
    me = httpx.get(stack.api_url + "/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.json()["user"] == "lee"
    stack.cli("tokens", "revoke", token_id)
    refused = httpx.post(
        stack.api_url + path, json={"action_hash": binding}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert error_of(refused) == (401, "unauthenticated")
    assert "revoked" in refused.json()["error"]["message"]

    # Scoped: maria's token for support work carries no finance, so it cannot approve a refund
    # (and she could not anyway: separation of duties is checked after the role).
    with api(stack, "maria", "support") as as_support:
        assert as_support.get("/v1/me").json()["roles"] == ["support"]
        scoped = as_support.post(path, json={"action_hash": binding})
    assert error_of(scoped) == (403, "wrong_role")
    # A publisher's token publishes and does nothing else.
    assert error_of(call(stack, "sam", "GET", "/v1/approvals")) == (403, "forbidden")
    assert error_of(call(stack, "sam", "GET", "/v1/audit/verify")) == (403, "forbidden")
    # No one can widen a token beyond the roles the users file gives them.
    widened = stack.cli("tokens", "create", "--user", "sam", "--role", "finance", check=False)
    assert widened.returncode == 2
    assert "sam does not hold finance" in widened.stderr

    assert approve(stack, "lee", request.approval_id, binding).status_code == 200
    assert isinstance(wait_run_end(stack, run), RunCompleted)


QUORUM = """
@id("test-refund-two-approvers")
@approval("finance")
@quorum("2")
@reason("refunds above 3,000 need two people in finance")
permit (principal in Role::"support", action == Action::"issue_refund", resource)
when { context.parameters.amount > 3000 && context.parameters.amount <= 5000 };
"""


def test_a_quorum_needs_that_many_distinct_approvers(stack: Stack) -> None:
    with policy(stack, "quorum.cedar", QUORUM):
        run = publish_as(stack, "sam", "A-3001", 4200)
        request = wait_approval(stack, run)
        assert request.decision.approvals_required == 2
        binding = request.action_hash
        assert binding
        first = approve(stack, "dana", request.approval_id, binding)
        assert first.status_code == 200, first.text
        assert first.json()["approval"]["status"] == "pending"
        assert error_of(approve(stack, "dana", request.approval_id, binding)) == (409, "duplicate_approver")
        assert approve(stack, "lee", request.approval_id, binding).json()["approval"]["status"] == "approved"
        assert isinstance(wait_run_end(stack, run), RunCompleted)
    executable = [
        e
        for e in run_events(stack, run, "actions.approved")
        if isinstance(e, ActionApproved) and e.action.tool == "issue_refund" and e.revalidated
    ]
    assert [sorted(a.user for a in e.approvers) for e in executable] == [["dana", "lee"]]


DEADLINE = """
@id("test-refund-decide-quickly")
@approval("finance")
@expires("2s")
@reason("this refund must be decided within seconds")
permit (principal in Role::"support", action == Action::"issue_refund", resource)
when { context.parameters.amount == 1313 };
"""


def test_an_approval_nobody_decides_expires_and_the_run_escalates(stack: Stack) -> None:
    with policy(stack, "deadline.cedar", DEADLINE):
        run = publish_as(stack, "sam", "A-4001", 1313)
        # As requested, not as pending: on a slow machine it may have expired already.
        request = wait_for(
            stack, lambda e: isinstance(e, ApprovalRequested) and e.run_id == run, "approvals.requested"
        )
        assert isinstance(request, ApprovalRequested)
        assert request.decision.approval_timeout_s == 2
        end = wait_run_end(stack, run)
    assert isinstance(end, RunEscalated)
    assert end.cause == "approval_expired"
    [rejected] = [e for e in run_events(stack, run, "actions.rejected") if isinstance(e, ActionRejected)]
    assert rejected.decision.limit == "approval_expired"
    assert "nothing is ever approved by default" in rejected.decision.reasons[0]
    # Too late: an expired approval cannot be used.
    assert request.action_hash
    assert error_of(approve(stack, "dana", request.approval_id, request.action_hash)) == (409, "not_pending")
    status = call(stack, "dana", "GET", f"/v1/approvals/{request.approval_id}").json()["approval"]["status"]
    assert status == "expired"


def test_editing_parameters_while_approving_proposes_again(stack: Stack) -> None:
    run = publish_as(stack, "sam", "A-5001", 2600)
    request = wait_approval(stack, run)
    assert request.action_hash
    # The order a refund is for is what policy judged: it cannot be edited.
    bad = approve(
        stack,
        "dana",
        request.approval_id,
        request.action_hash,
        parameters={**request.action.parameters, "order_id": "A-9999"},
    )
    assert error_of(bad) == (422, "invalid_amendment")
    edited = approve(
        stack,
        "dana",
        request.approval_id,
        request.action_hash,
        parameters={**request.action.parameters, "amount": 2000},
        comment="partial refund agreed",
    )
    assert edited.json()["approval"]["status"] == "amended"
    # The edit is a new proposal, decided by policy again, and asks for approval again.
    again = wait_for(
        stack,
        lambda e: (
            isinstance(e, ApprovalRequested) and e.run_id == run and e.approval_id != request.approval_id
        ),
        "approvals.requested",
    )
    assert isinstance(again, ApprovalRequested)
    assert again.action.parameters["amount"] == 2000
    assert again.amended_by == "dana"
    proposed = [e for e in run_events(stack, run, "actions.proposed") if isinstance(e, ActionProposed)]
    assert [p.amended_by for p in proposed if p.action.tool == "issue_refund"] == [None, "dana"]
    wait_pending(stack, again)
    assert again.action_hash
    # Whoever edited it may not approve the edit.
    assert error_of(approve(stack, "dana", again.approval_id, again.action_hash)) == (
        403,
        "separation_of_duties",
    )
    assert approve(stack, "lee", again.approval_id, again.action_hash).status_code == 200
    end = wait_run_end(stack, run)
    assert isinstance(end, RunCompleted)
    assert end.outputs["refund"]["amount"] == 2000


def test_probes_answer_without_a_token_and_say_nothing_else(stack: Stack) -> None:
    for who in (None, "root"):
        with api(stack, who, *(("admin",) if who else ())) as client:
            health = client.get("/v1/health")
            ready = client.get("/v1/ready")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    # Everything else still needs a token.
    assert httpx.get(stack.api_url + "/v1/me").status_code == 401
