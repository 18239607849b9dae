"""A tenant is a boundary for people and policy: an approver acting for acme neither lists, sees
nor decides globex's approvals or runs, through the API, the console or the CLI; a trigger
published for acme through the API cannot claim globex; and globex's own policies decide the
same action differently from acme's, under their own hash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from charter.cli import exits
from charter.events import ActionRejected, ApprovalRequested, RunCompleted, RunFailed, TriggerReceived
from services.approvals.console import COOKIE, csrf_token
from tests.e2e.conftest import (
    Stack,
    broker_env,
    run_id,
    running,
    stack_env,
    wait_approval,
    wait_for,
    wait_run_end,
)

pytestmark = pytest.mark.e2e

USERS = """
  - {id: fin-acme, email: fin@acme.example, roles: [finance], tenants: [acme]}
  - {id: fin-globex, email: fin@globex.example, roles: [finance], tenants: [globex]}
  - {id: pub-acme, roles: [publisher], tenants: [acme]}
  - {id: pub-globex, roles: [publisher], tenants: [globex]}
  - {id: admin-acme, roles: [admin], tenants: [acme]}
  - {id: ops-acme, roles: [operator], tenants: [acme]}
"""
GLOBEX_POLICY = """
@id("globex-refund-cap")
@reason("globex caps the refunds an agent makes at 1,000")
forbid (principal, action == Action::"issue_refund", resource)
when { context.tenant == "globex" && principal.tenant == "globex" && context.parameters.amount > 1000 };
"""


@pytest.fixture(scope="module")
def tenants_stack(
    broker: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp(f"tenants-{broker}") / "home"
    users = Path(stack_env(home)["CHARTER_USERS_FILE"])
    # The platform admin acts for every tenant: only such a one may issue the tenants' tokens.
    admin = "    roles: [admin]\n"
    users.write_text(users.read_text().replace(admin, admin + '    tenants: ["*"]\n') + USERS)
    globex = users.parent / "policies" / "tenants" / "globex"
    globex.mkdir(parents=True)
    (globex / "cap.cedar").write_text(GLOBEX_POLICY)
    with running(home, **broker_env(request, broker)) as stack:
        yield stack


def _api(stack: Stack, user: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {stack.token(user)}"}
    return httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)


def _published(stack: Stack, publisher: str, order: str, amount: int) -> str:
    """A refund published through the API by `publisher`: its run."""
    with _api(stack, publisher) as api:
        data = {"order_id": order, "amount": amount}
        accepted = api.post("/v1/events", json={"name": "support.refund_requested", "data": data})
    assert accepted.status_code == 202, accepted.text
    return run_id(accepted.json()["event_id"], "support-refunds")


def _refund(stack: Stack, publisher: str, order: str) -> tuple[str, ApprovalRequested]:
    """A refund large enough for finance to approve (and within globex's cap): its run, and the
    approval it waits for."""
    run = _published(stack, publisher, order, 500)
    return run, wait_approval(stack, run)


def test_an_approver_of_one_tenant_cannot_list_see_or_decide_anothers(tenants_stack: Stack) -> None:
    stack = tenants_stack
    acme_run, acme = _refund(stack, "pub-acme", "A-7101")
    globex_run, globex = _refund(stack, "pub-globex", "G-7201")
    assert (acme.envelope.tenant, globex.envelope.tenant) == ("acme", "globex")

    with _api(stack, "fin-acme") as api:
        listed = {a["approval_id"] for a in api.get("/v1/approvals").json()["approvals"]}
        assert acme.approval_id in listed
        assert globex.approval_id not in listed
        assert api.get(f"/v1/approvals/{globex.approval_id}").status_code == 404
        decided = api.post(
            f"/v1/approvals/{globex.approval_id}/approve", json={"action_hash": globex.action_hash}
        )
        assert decided.status_code == 404, decided.text
        assert api.get(f"/v1/runs/{globex_run}").status_code == 404
        assert globex_run not in {r["run_id"] for r in api.get("/v1/runs").json()["runs"]}
        assert api.get(f"/v1/runs/{acme_run}").json()["run"]["tenant"] == "acme"

    # The console, signed in with the same credential.
    token = stack.token("fin-acme")
    with httpx.Client(base_url=stack.api_url, cookies={COOKIE: token}, timeout=30) as console:
        page = console.get("/console/approvals").text
        assert acme.approval_id in page
        assert globex.approval_id not in page
        assert "G-7201" not in page
        shown = console.get(f"/console/approvals/{globex.approval_id}")
        assert shown.status_code == 404
        assert "G-7201" not in shown.text
        form = {"decision": "approve", "action_hash": globex.action_hash or "", "csrf": csrf_token(token)}
        posted = console.post(f"/console/approvals/{globex.approval_id}/decide", data=form)
        assert posted.status_code == 404
        assert console.get(f"/console/runs/{globex_run}").status_code == 404

    # The CLI, with the same token.
    listed_cli = stack.as_user("fin-acme", "approvals", "list").stdout
    assert acme.approval_id[:8] in listed_cli
    assert globex.approval_id[:8] not in listed_cli
    for act in (("approvals", "show"), ("approvals", "approve"), ("approvals", "reject")):
        refused = stack.as_user("fin-acme", *act, globex.approval_id, check=False)
        assert refused.returncode == exits.NOT_FOUND, refused.stderr
        assert "G-7201" not in refused.stdout + refused.stderr

    # Each tenant's approver decides their own; globex's approval was never touched by acme's.
    assert stack.as_user("fin-acme", "approvals", "approve", acme.approval_id).returncode == 0
    assert stack.as_user("fin-globex", "approvals", "approve", globex.approval_id).returncode == 0
    assert isinstance(wait_run_end(stack, acme_run), RunCompleted)
    assert isinstance(wait_run_end(stack, globex_run), RunCompleted)


def test_a_trigger_published_for_one_tenant_cannot_claim_another(tenants_stack: Stack) -> None:
    stack = tenants_stack
    event = {"name": "support.refund_requested", "data": {"order_id": "A-7301", "amount": 5}}
    with _api(stack, "pub-acme") as api:
        claimed = api.post("/v1/events", json={**event, "tenant": "globex"})
        assert claimed.status_code == 403, claimed.text
        assert "not for tenant globex" in claimed.json()["error"]["message"]
        stamped = api.post("/v1/events", json=event)
    assert stamped.status_code == 202, stamped.text
    trigger_id = stamped.json()["event_id"]
    trigger = wait_for(
        stack, lambda e: isinstance(e, TriggerReceived) and e.event_id == trigger_id, "triggers"
    )
    assert trigger.envelope.tenant == "acme"
    refused_cli = stack.as_user(
        "pub-acme",
        "publish",
        "support.refund_requested",
        "--tenant",
        "globex",
        "--data",
        '{"order_id": "A-7302", "amount": 5}',
        check=False,
    )
    assert refused_cli.returncode == exits.REFUSED
    assert "HTTP 403 forbidden" in refused_cli.stderr


def test_each_tenants_policies_decide_the_same_action_under_their_own_hash(tenants_stack: Stack) -> None:
    stack = tenants_stack
    acme_run = _published(stack, "pub-acme", "A-7501", 1500)
    globex_run = _published(stack, "pub-globex", "G-7502", 1500)
    asked = wait_approval(stack, acme_run)  # acme: the base policies, finance approves
    assert asked.decision.policy_ids == ["refund-large"]
    denied = wait_for(
        stack,
        lambda e: (
            isinstance(e, ActionRejected) and e.run_id == globex_run and e.action.tool == "issue_refund"
        ),
        "actions.rejected",
    )
    assert isinstance(denied, ActionRejected)
    assert denied.decision.policy_ids == ["globex-refund-cap"]
    assert denied.decision.reasons == [
        "forbidden by globex-refund-cap: globex caps the refunds an agent makes at 1,000"
    ]
    assert denied.decision.policy_hash != asked.decision.policy_hash
    assert isinstance(wait_run_end(stack, globex_run), RunFailed)


def test_an_admin_or_operator_of_one_tenant_stays_within_it(tenants_stack: Stack) -> None:
    stack = tenants_stack
    stack.token("fin-acme"), stack.token("fin-globex")  # issued by the admin of every tenant
    issued = stack.as_user("admin-acme", "tokens", "create", "--user", "fin-globex", check=False)
    assert issued.returncode == exits.REFUSED
    assert "does not act for every tenant fin-globex acts for" in issued.stderr
    listed = stack.as_user("admin-acme", "tokens", "list").stdout
    assert "fin-acme" in listed
    assert "fin-globex" not in listed
    # A kill switch stops every tenant's runs: not for an operator of one.
    switched = stack.as_user(
        "ops-acme", "kill-switch", "on", "--agent", "support-refunds", "--reason", "acme only", check=False
    )
    assert switched.returncode == exits.REFUSED
    assert "does not act for tenant default" in switched.stderr
