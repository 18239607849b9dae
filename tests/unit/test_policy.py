from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from charter import agents, tools
from charter.clock import derive_id
from charter.events import Action, ActionApproved, ActionProposed, ActionRejected, ApprovalRequested, Event
from services.policy.decide import decide
from services.policy.engine import PolicySet, to_cedar
from tests.conftest import REPO

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
TOOLS = tools.load(["charter.demo.tools"])
AGENTS = agents.load(REPO / "agents", TOOLS)
POLICIES = PolicySet.load(REPO / "policies")


def proposal(
    tool: str, parameters: dict[str, Any], *, agent: str = "support-refunds", env: str = "production"
) -> ActionProposed:
    run = derive_id("t", agent)
    action = Action(
        action_id=derive_id(run, "a"),
        step_index=0,
        step_id="s",
        tool=tool,
        resource="order/A-1001",
        parameters=parameters,
        environment=env,
    )
    return ActionProposed.create(
        event_id=derive_id(run, "p"),
        now=NOW,
        tenant="acme",
        agent=agent,
        run_id=run,
        correlation_id="c",
        action=action,
    )


def refund(amount: Any) -> ActionProposed:
    return proposal("issue_refund", {"order_id": "A-1001", "amount": amount, "currency": "EUR"})


def only(events: list[Event]) -> Event:
    assert len(events) == 1
    return events[0]


def test_a_small_refund_is_allowed_by_policy() -> None:
    out = only(decide(refund(40), POLICIES, AGENTS, TOOLS, NOW))
    assert isinstance(out, ActionApproved)
    assert out.approved_by == "policy"
    assert out.decision.outcome == "allow"
    assert out.decision.policy_ids == ["refund-small"]
    assert out.decision.policy_hash == POLICIES.hash
    assert out.envelope.causation_id == refund(40).event_id


def test_a_large_refund_needs_finance() -> None:
    out = only(decide(refund(2500), POLICIES, AGENTS, TOOLS, NOW))
    assert isinstance(out, ApprovalRequested)
    assert out.decision.outcome == "approval"
    assert out.decision.approval_roles == ["finance"]
    assert out.decision.policy_ids == ["refund-large"]


def test_a_refund_over_the_limit_is_forbidden_with_the_policy_named() -> None:
    out = only(decide(refund(9000), POLICIES, AGENTS, TOOLS, NOW))
    assert isinstance(out, ActionRejected)
    assert out.decision.policy_ids == ["refund-over-limit"]
    assert "never made by an agent" in out.decision.reasons[0]


def test_it_read_access_is_granted_and_production_admin_is_denied() -> None:
    def grant(level: str, env: str) -> Event:
        params = {"user": "sam", "system": "db", "level": level, "target_environment": env}
        return only(decide(proposal("grant_access", params, agent="it-access"), POLICIES, AGENTS, TOOLS, NOW))

    assert isinstance(grant("read", "production"), ActionApproved)
    assert isinstance(grant("admin", "staging"), ApprovalRequested)
    denied = grant("admin", "production")
    assert isinstance(denied, ActionRejected)
    assert denied.decision.policy_ids == ["no-production-admin"]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (proposal("delete_customer", {}), "unknown tool"),
        (
            proposal(
                "grant_access", {"user": "a", "system": "b", "level": "read", "target_environment": "x"}
            ),
            "not granted",
        ),
        (proposal("issue_refund", {"order_id": "A-1001", "amount": 5}, agent="ghost"), "unknown agent"),
        (
            proposal("issue_refund", {"order_id": "A-1001", "amount": 5, "currency": "EUR"}, env="staging"),
            "environment",
        ),
        (refund(-5), "parameters invalid"),
        (
            proposal("issue_refund", {"order_id": "A-1001", "amount": 5, "currency": "EUR", "extra": 1}),
            "parameters invalid",
        ),
    ],
)
def test_everything_outside_the_registry_and_grants_is_denied(event: ActionProposed, reason: str) -> None:
    out = only(decide(event, POLICIES, AGENTS, TOOLS, NOW))
    assert isinstance(out, ActionRejected)
    assert reason in out.decision.reasons[0]


def test_no_permit_means_deny(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text('permit (principal, action == Action::"lookup_order", resource);')
    out = only(decide(refund(40), PolicySet.load(tmp_path), AGENTS, TOOLS, NOW))
    assert isinstance(out, ActionRejected)
    assert "no policy permits issue_refund" in out.decision.reasons[0]


def test_an_invalid_policy_set_denies_everything(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text("permit (principal, action, resource) when { oops };")
    policies = PolicySet.load(tmp_path)
    assert policies.error
    out = only(decide(refund(40), policies, AGENTS, TOOLS, NOW))
    assert isinstance(out, ActionRejected)
    assert "policy set invalid" in out.decision.reasons[0]


def test_an_empty_policy_directory_denies_everything(tmp_path: Path) -> None:
    out = only(decide(refund(40), PolicySet.load(tmp_path), AGENTS, TOOLS, NOW))
    assert isinstance(out, ActionRejected)


def test_an_evaluation_error_denies_even_when_another_policy_permits(tmp_path: Path) -> None:
    # Cedar skips a policy that errors; a skipped forbid must not turn into an allow.
    (tmp_path / "p.cedar").write_text(
        "permit (principal, action, resource);\n"
        "forbid (principal, action, resource) when { context.parameters.amount > 5000 };"
    )
    out = only(
        decide(proposal("lookup_order", {"order_id": "A-1001"}), PolicySet.load(tmp_path), AGENTS, TOOLS, NOW)
    )
    assert isinstance(out, ActionRejected)
    assert "policy error" in out.decision.reasons[0]


def test_policy_ids_default_to_file_and_position(tmp_path: Path) -> None:
    (tmp_path / "mine.cedar").write_text('permit (principal, action == Action::"lookup_order", resource);')
    policies = PolicySet.load(tmp_path)
    out = only(decide(proposal("lookup_order", {"order_id": "A-1001"}), policies, AGENTS, TOOLS, NOW))
    assert isinstance(out, ActionApproved)
    assert out.decision.policy_ids == ["mine.cedar#0"]


def test_duplicate_ids_and_approval_on_forbid_are_invalid(tmp_path: Path) -> None:
    (tmp_path / "a.cedar").write_text(
        '@id("x") permit (principal, action, resource);\n@id("x") permit (principal, action, resource);'
    )
    assert "used twice" in (PolicySet.load(tmp_path).error or "")
    (tmp_path / "a.cedar").write_text('@approval("finance") forbid (principal, action, resource);')
    assert "only makes sense on a permit" in (PolicySet.load(tmp_path).error or "")


def test_the_hash_changes_with_the_text(tmp_path: Path) -> None:
    (tmp_path / "a.cedar").write_text("permit (principal, action, resource);")
    first = PolicySet.load(tmp_path).hash
    (tmp_path / "a.cedar").write_text("permit (principal, action, resource);\n")
    assert PolicySet.load(tmp_path).hash != first


def test_an_approval_permit_wins_over_a_plain_permit(tmp_path: Path) -> None:
    (tmp_path / "a.cedar").write_text(
        'permit (principal, action == Action::"lookup_order", resource);\n'
        '@approval("auditor") permit (principal, action == Action::"lookup_order", resource);'
    )
    out = only(
        decide(proposal("lookup_order", {"order_id": "A-1001"}), PolicySet.load(tmp_path), AGENTS, TOOLS, NOW)
    )
    assert isinstance(out, ApprovalRequested)
    assert out.decision.approval_roles == ["auditor"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        ("x", "x"),
        (True, True),
        (12.5, {"__extn": {"fn": "decimal", "arg": "12.5000"}}),
        ({"a": None, "b": [1, None]}, {"b": [1]}),
    ],
)
def test_values_convert_to_cedar(value: Any, expected: Any) -> None:
    assert to_cedar(value) == expected


@pytest.mark.parametrize("value", [0.00001, 2**64, object()])
def test_values_cedar_cannot_hold_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match=r"Cedar|decimal places|cannot be"):
        to_cedar(value)


def test_a_float_parameter_cedar_cannot_compare_is_denied() -> None:
    out = only(
        decide(
            proposal("lookup_order", {"order_id": "A-1001", "weird": 0.00001}), POLICIES, AGENTS, TOOLS, NOW
        )
    )
    assert isinstance(out, ActionRejected)
