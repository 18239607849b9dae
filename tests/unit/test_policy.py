"""The policy decision: Cedar, the registry, segmentation, live limits, kill switches and
revalidation, each on its own, with no broker and no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from charter import agents, tools
from charter.binding import action_hash
from charter.clock import derive_id
from charter.events import (
    Action,
    ActionApproved,
    ActionProposed,
    ActionRejected,
    ApprovalRequested,
    Approver,
    Decision,
    Event,
)
from charter.killswitch import KillSwitch, switch_id
from charter.signing import Signer, Verifier
from services.policy.bundle import PolicyBundle
from services.policy.decide import Context, decide, revalidate
from services.policy.engine import to_cedar
from services.policy.limits import Usage
from tests.conftest import REPO

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
TOOLS = tools.load(["charter.demo.tools"])
AGENTS = agents.load(REPO / "agents", TOOLS)
BUNDLE = PolicyBundle.load(REPO / "policies")
# The approvals service's key pair: it signs human approvals, policy checks them.
_APPROVALS_KEY = Ed25519PrivateKey.generate()
APPROVALS = Signer(_APPROVALS_KEY)
APPROVALS_KEY = Verifier(_APPROVALS_KEY.public_key())
CTX = Context(BUNDLE, AGENTS, TOOLS, approvals_key=APPROVALS_KEY)
RESOURCES = {
    "issue_refund": "order/A-1001",
    "lookup_order": "order/A-1001",
    "notify_customer": "customer/c-1",
}


def proposal(
    tool: str,
    parameters: dict[str, Any],
    *,
    agent: str = "support-refunds",
    env: str = "production",
    resource: str | None = None,
    run: str | None = None,
    step: int = 0,
) -> ActionProposed:
    run = run or derive_id("t", agent)
    action = Action(
        action_id=derive_id(run, f"a{step}"),
        step_index=step,
        step_id="s",
        tool=tool,
        resource=resource or RESOURCES.get(tool, "system/production/wiki"),
        parameters=parameters,
        environment=env,
    )
    event_id = derive_id(run, f"p{step}:{tool}:{parameters}")
    return ActionProposed.create(
        event_id=event_id, now=NOW, tenant="acme", agent=agent, run_id=run, correlation_id="c", action=action
    )


def refund(amount: Any, **kw: Any) -> ActionProposed:
    return proposal("issue_refund", {"order_id": "A-1001", "amount": amount, "currency": "EUR"}, **kw)


def grant(
    level: str, system: str = "wiki", *, agent: str = "it-access", env: str = "production", **kw: Any
) -> ActionProposed:
    params = {"user": "sam", "system": system, "level": level, "target_environment": env}
    return proposal("grant_access", params, agent=agent, env=env, resource=f"system/{env}/{system}", **kw)


def only(events: list[Event]) -> Event:
    assert len(events) == 1
    return events[0]


def decided(
    event: ActionProposed, ctx: Context = CTX, usage: Usage | None = None, now: datetime = NOW
) -> Event:
    return only(decide(event, ctx, usage if usage is not None else Usage(), now))


def denial(event: Event) -> Decision:
    assert isinstance(event, ActionRejected), event
    return event.decision


def test_a_small_refund_is_allowed_by_policy() -> None:
    out = decided(refund(40))
    assert isinstance(out, ActionApproved)
    assert out.approved_by == "policy"
    assert out.executable
    assert out.decision.outcome == "allow"
    assert out.decision.policy_ids == ["refund-small"]
    assert out.decision.policy_hash == BUNDLE.hash
    assert out.envelope.causation_id == refund(40).event_id


def test_a_large_refund_needs_finance() -> None:
    out = decided(refund(2500))
    assert isinstance(out, ApprovalRequested)
    assert out.decision.approval_roles == ["finance"]
    assert out.decision.policy_ids == ["refund-large"]


def test_a_refund_over_the_limit_is_forbidden_with_the_policy_named() -> None:
    decision = denial(decided(refund(9000)))
    assert decision.policy_ids == ["refund-over-limit"]
    assert "never made by an agent" in decision.reasons[0]
    assert decision.limit is None


def test_it_read_access_is_granted_and_production_admin_is_denied() -> None:
    assert isinstance(decided(grant("read")), ActionApproved)
    assert isinstance(decided(grant("admin", env="staging", agent="it-access-staging")), ApprovalRequested)
    assert denial(decided(grant("admin"))).policy_ids == ["no-production-admin"]


def test_resource_allowlists_and_parameter_constraints_are_written_in_policy() -> None:
    assert denial(decided(grant("read", system="mainframe"))).policy_ids == ["it-known-systems"]
    wildcard = proposal("notify_customer", {"customer": "cust-*", "message": "hi"})
    assert denial(decided(wildcard)).policy_ids == ["no-wildcard-recipients"]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (proposal("delete_customer", {}), "unknown tool"),
        (grant("read", agent="support-refunds"), "not granted"),
        (proposal("issue_refund", {"order_id": "A-1001", "amount": 5}, agent="ghost"), "unknown agent"),
        (refund(5, env="staging"), "action environment"),
        (refund(-5), "parameters invalid"),
        (
            proposal("issue_refund", {"order_id": "A-1001", "amount": 5, "currency": "EUR", "x": 1}),
            "parameters invalid",
        ),
        (refund(5, resource="warehouse/7"), "not in the resource catalog"),
    ],
)
def test_everything_outside_the_registry_and_grants_is_denied(event: ActionProposed, reason: str) -> None:
    assert reason in denial(decided(event)).reasons[0]


def test_a_staging_agent_can_never_reach_a_production_resource() -> None:
    # Even though a policy would permit read access, segmentation denies before Cedar.
    sneaky = grant("read", agent="it-access-staging", env="staging")
    sneaky = sneaky.model_copy(
        update={"action": sneaky.action.model_copy(update={"resource": "system/production/wiki"})}
    )
    decision = denial(decided(sneaky))
    assert "environment segmentation" in decision.reasons[0]
    assert decision.policy_ids == []


def _bundle(tmp_path: Path, cedar: str, limits: str | None = None) -> PolicyBundle:
    (tmp_path / "p.cedar").write_text(cedar)
    (tmp_path / "resources.yaml").write_text((REPO / "policies" / "resources.yaml").read_text())
    if limits is not None:
        (tmp_path / "limits.yaml").write_text(limits)
    return PolicyBundle.load(tmp_path)


def test_no_permit_means_deny(tmp_path: Path) -> None:
    ctx = Context(
        _bundle(tmp_path, 'permit (principal, action == Action::"lookup_order", resource);'), AGENTS, TOOLS
    )
    assert "no policy permits issue_refund" in denial(decided(refund(40), ctx)).reasons[0]


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"p.cedar": "permit (principal, action, resource) when { oops };"}, "p.cedar"),
        ({}, "no *.cedar files"),
        (
            {
                "p.cedar": "permit (principal, action, resource);",
                "limits.yaml": "defaults: {max_steps: zero}",
            },
            "limits.yaml",
        ),
        (
            {"p.cedar": "permit (principal, action, resource);", "resources.yaml": "resources: [{match: x}]"},
            "resources.yaml",
        ),
        (
            {"p.cedar": "permit (principal, action, resource);", "limits.yaml": "defaults: [unclosed"},
            "limits.yaml",
        ),
    ],
)
def test_an_invalid_bundle_denies_everything_naming_the_file(
    tmp_path: Path, files: dict[str, str], fragment: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    bundle = PolicyBundle.load(tmp_path)
    assert fragment in (bundle.error or "")
    reason = denial(decided(refund(40), Context(bundle, AGENTS, TOOLS))).reasons[0]
    assert "policy set invalid" in reason


def test_an_evaluation_error_denies_even_when_another_policy_permits(tmp_path: Path) -> None:
    # Cedar skips a policy that errors; a skipped forbid must not turn into an allow.
    bundle = _bundle(
        tmp_path,
        "permit (principal, action, resource);\n"
        "forbid (principal, action, resource) when { context.parameters.amount > 5000 };",
    )
    assert (
        "policy error"
        in denial(
            decided(proposal("lookup_order", {"order_id": "A-1001"}), Context(bundle, AGENTS, TOOLS))
        ).reasons[0]
    )


def test_policy_ids_default_to_file_and_position(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 'permit (principal, action == Action::"lookup_order", resource);')
    out = decided(proposal("lookup_order", {"order_id": "A-1001"}), Context(bundle, AGENTS, TOOLS))
    assert isinstance(out, ActionApproved)
    assert out.decision.policy_ids == ["p.cedar#0"]


def test_duplicate_ids_and_approval_on_forbid_are_invalid(tmp_path: Path) -> None:
    assert "used twice" in (
        _bundle(
            tmp_path,
            '@id("x") permit (principal, action, resource);\n@id("x") permit (principal, action, resource);',
        ).error
        or ""
    )
    assert "only makes sense on a permit" in (
        _bundle(tmp_path, '@approval("finance") forbid (principal, action, resource);').error or ""
    )


def test_the_hash_covers_every_file_of_the_bundle(tmp_path: Path) -> None:
    first = _bundle(tmp_path, "permit (principal, action, resource);").hash
    (tmp_path / "limits.yaml").write_text("defaults: {max_steps: 4}\n")
    assert PolicyBundle.load(tmp_path).hash != first


def test_an_approval_permit_wins_over_a_plain_permit(tmp_path: Path) -> None:
    bundle = _bundle(
        tmp_path,
        'permit (principal, action == Action::"lookup_order", resource);\n'
        '@approval("auditor") permit (principal, action == Action::"lookup_order", resource);',
    )
    out = decided(proposal("lookup_order", {"order_id": "A-1001"}), Context(bundle, AGENTS, TOOLS))
    assert isinstance(out, ApprovalRequested)
    assert out.decision.approval_roles == ["auditor"]


# Live limits ----------------------------------------------------------------------------------


def _limited(tmp_path: Path, limits: str) -> Context:
    cedar = (REPO / "policies" / "refunds.cedar").read_text() + (
        REPO / "policies" / "it-access.cedar"
    ).read_text()
    return Context(_bundle(tmp_path, cedar, limits), AGENTS, TOOLS)


def test_the_run_budget_stops_the_action_that_would_exceed_it(tmp_path: Path) -> None:
    ctx = _limited(tmp_path, "defaults: {budget_per_run: 12}")
    usage = Usage()
    # issue_refund costs 5 units, lookup_order 1: 5 + 5 + 1 = 11, then another 5 would be 16.
    for step, event in enumerate([refund(10), refund(20), proposal("lookup_order", {"order_id": "A-1001"})]):
        assert isinstance(
            decided(
                event.model_copy(update={"action": event.action.model_copy(update={"step_index": step})}),
                ctx,
                usage,
            ),
            ActionApproved,
        )
    decision = denial(decided(refund(30, step=3), ctx, usage))
    assert decision.limit == "budget_per_run"
    assert "would exceed 12" in decision.reasons[0]
    assert usage.get(("cost", refund(1).envelope.run_id or "", "run")) == 11


def test_the_daily_budget_spans_runs_and_resets_the_next_day(tmp_path: Path) -> None:
    ctx = _limited(tmp_path, "agents: {support-refunds: {budget_per_day: 10}}")
    usage = Usage()
    assert isinstance(decided(refund(10, run="r1"), ctx, usage), ActionApproved)
    assert isinstance(decided(refund(10, run="r2"), ctx, usage), ActionApproved)
    assert denial(decided(refund(10, run="r3"), ctx, usage)).limit == "budget_per_day"
    tomorrow = NOW + timedelta(days=1)
    assert isinstance(decided(refund(10, run="r4"), ctx, usage, tomorrow), ActionApproved)


def test_a_denied_action_is_not_charged(tmp_path: Path) -> None:
    ctx = _limited(tmp_path, "defaults: {budget_per_run: 5}")
    usage = Usage()
    denial(decided(refund(9000), ctx, usage))  # forbidden by policy
    assert isinstance(decided(refund(10, step=1), ctx, usage), ActionApproved)


def test_an_agent_cannot_loosen_what_security_sets(tmp_path: Path) -> None:
    # it-access-staging sets max_steps 5 itself; security sets 2: 2 wins. And the reverse.
    ctx = _limited(tmp_path, "defaults: {max_steps: 2}")
    usage = Usage()
    for step in range(2):
        assert not isinstance(
            decided(
                grant(
                    "read", agent="it-access-staging", env="staging", step=step, system=["wiki", "jira"][step]
                ),
                ctx,
                usage,
            ),
            ActionRejected,
        )
    assert (
        denial(
            decided(grant("read", agent="it-access-staging", env="staging", step=2, system="crm"), ctx, usage)
        ).limit
        == "max_steps"
    )


def test_the_rate_limit_is_a_sliding_window(tmp_path: Path) -> None:
    # Two per ten seconds. NOW is on a window boundary; the estimate counts the previous fixed
    # window weighted by how much of it the sliding window still covers.
    ctx = _limited(tmp_path, "agents: {it-access: {rate: {count: 2, per_seconds: 10}}}")
    usage = Usage()
    systems = iter(["wiki", "jira", "crm", "build", "payroll-db"])

    def at(seconds: float) -> Event:
        return decided(
            grant("read", next(systems), run=f"r{seconds}"), ctx, usage, NOW + timedelta(seconds=seconds)
        )

    assert isinstance(at(0), ActionApproved)
    assert isinstance(at(4), ActionApproved)
    assert denial(at(8)).limit == "rate_agent"
    # Just into the next window, the two are still most of the sliding window: 2 x 0.9 + 0.
    assert denial(at(11)).limit == "rate_agent"
    # Late in it, they have nearly slid out: 2 x 0.2 + 0 leaves room.
    assert isinstance(at(18), ActionApproved)


def test_a_tool_rate_limit_spans_agents(tmp_path: Path) -> None:
    ctx = _limited(tmp_path, "tools: {grant_access: {rate: {count: 1, per_seconds: 60}}}")
    usage = Usage()
    assert isinstance(decided(grant("read"), ctx, usage), ActionApproved)
    assert (
        denial(decided(grant("read", agent="it-access-staging", env="staging", run="s"), ctx, usage)).limit
        == "rate_tool"
    )


def test_the_same_call_proposed_n_times_in_a_run_is_a_loop(tmp_path: Path) -> None:
    ctx = _limited(tmp_path, "defaults: {loop_threshold: 3}")
    usage = Usage()
    lookup = proposal("lookup_order", {"order_id": "A-1001"})
    assert isinstance(decided(lookup, ctx, usage), ActionApproved)
    assert isinstance(decided(lookup, ctx, usage), ActionApproved)
    decision = denial(decided(lookup, ctx, usage))
    assert decision.limit == "loop"
    assert "3 times" in decision.reasons[0]
    # Other parameters are another call, not the loop.
    assert isinstance(decided(proposal("lookup_order", {"order_id": "A-1002"}), ctx, usage), ActionApproved)


def test_model_tokens_reported_by_the_planner_count_against_the_budget(tmp_path: Path) -> None:
    ctx = _limited(tmp_path, "defaults: {tokens_per_run: 1000}")
    usage = Usage()
    assert isinstance(decided(refund(10).model_copy(update={"llm_tokens": 600}), ctx, usage), ActionApproved)
    denied = denial(decided(refund(10, step=1).model_copy(update={"llm_tokens": 600}), ctx, usage))
    assert denied.limit == "tokens_per_run"


# Kill switches and revalidation --------------------------------------------------------------


def _switch(agent: str | None = None, tool: str | None = None) -> KillSwitch:
    return KillSwitch(switch_id(agent, tool), agent, tool, "fraud investigation", "ops", NOW)


@pytest.mark.parametrize(
    ("agent", "tool", "hit"),
    [
        (None, None, True),
        ("support-refunds", None, True),
        (None, "issue_refund", True),
        ("it-access", None, False),
        (None, "lookup_order", False),
    ],
)
def test_a_kill_switch_denies_what_it_covers(agent: str | None, tool: str | None, hit: bool) -> None:
    ctx = Context(BUNDLE, AGENTS, TOOLS, [_switch(agent, tool)])
    out = decided(refund(40), ctx)
    if hit:
        decision = denial(out)
        assert decision.limit == "kill_switch"
        assert "fraud investigation" in decision.reasons[0]
    else:
        assert isinstance(out, ActionApproved)


def _human_approved(
    event: ActionProposed, ctx: Context = CTX, approvers: tuple[tuple[str, str], ...] = (("dana", "finance"),)
) -> ActionApproved:
    """What the approvals service sends once people approved: signed with its key."""
    request = decided(event, ctx)
    assert isinstance(request, ApprovalRequested)
    approved = ActionApproved.caused_by(
        request,
        label="human",
        now=NOW,
        action=request.action,
        decision=request.decision,
        approved_by=",".join(u for u, _ in approvers),
        approval_id=request.approval_id,
        approvers=[Approver(user=u, roles=[r]) for u, r in approvers],
    )
    return APPROVALS.sign(approved)


def _with(tmp_path: Path, cedar: str, switches: list[KillSwitch] | None = None) -> Context:
    return Context(_bundle(tmp_path, cedar), AGENTS, TOOLS, switches or [], APPROVALS_KEY)


REFUNDS = (REPO / "policies" / "refunds.cedar").read_text()


def test_a_human_approval_is_decided_again_before_it_may_run() -> None:
    approved = _human_approved(refund(2500))
    assert not approved.executable
    out = only(revalidate(approved, CTX, NOW))
    assert isinstance(out, ActionApproved)
    assert out.executable
    assert out.approved_by == "dana"
    assert (out.approval_id, out.approvers) == (approved.approval_id, approved.approvers)
    assert out.decision.previous_policy_hash == BUNDLE.hash
    assert out.event_id == only(revalidate(approved, CTX, NOW)).event_id


def test_revalidation_after_a_policy_change_denies_and_shows_both_hashes(tmp_path: Path) -> None:
    approved = _human_approved(refund(2500))
    stricter = REFUNDS + (
        '\n@id("refund-freeze") forbid (principal, action == Action::"issue_refund", resource) '
        "when { context.parameters.amount > 1000 };\n"
    )
    ctx = _with(tmp_path, stricter)
    decision = denial(only(revalidate(approved, ctx, NOW)))
    assert decision.policy_ids == ["refund-freeze"]
    assert decision.previous_policy_hash == BUNDLE.hash
    assert decision.policy_hash == ctx.bundle.hash != BUNDLE.hash
    assert f"{BUNDLE.hash[:12]} -> {ctx.bundle.hash[:12]}" in decision.reasons[0]


def test_revalidation_refuses_an_approval_by_a_role_policy_no_longer_accepts(tmp_path: Path) -> None:
    approved = _human_approved(refund(2500))
    ctx = _with(tmp_path, REFUNDS.replace('@approval("finance")', '@approval("cfo")'))
    reason = denial(only(revalidate(approved, ctx, NOW))).reasons[0]
    assert "policy now requires 1 approval(s) by cfo; this action has 0" in reason


def test_revalidation_refuses_fewer_approvers_than_policy_now_asks_for(tmp_path: Path) -> None:
    ctx = _with(tmp_path, REFUNDS.replace('@approval("finance")', '@approval("finance")\n@quorum("2")'))
    one = _human_approved(refund(2500), ctx)
    assert (
        "requires 2 approval(s) by finance; this action has 1 (dana)"
        in denial(only(revalidate(one, ctx, NOW))).reasons[0]
    )
    two = _human_approved(refund(2500), ctx, (("dana", "finance"), ("lee", "finance")))
    assert isinstance(only(revalidate(two, ctx, NOW)), ActionApproved)


def test_revalidation_honours_a_kill_switch_set_during_the_wait() -> None:
    approved = _human_approved(refund(2500))
    ctx = Context(BUNDLE, AGENTS, TOOLS, [_switch("support-refunds")], APPROVALS_KEY)
    assert denial(only(revalidate(approved, ctx, NOW))).limit == "kill_switch"


def test_an_approval_not_signed_by_the_approvals_service_is_refused() -> None:
    genuine = _human_approved(refund(2500))
    unsigned = genuine.model_copy(update={"signature": None})
    forged = Signer(Ed25519PrivateKey.generate()).sign(genuine)
    # A genuine signature does not carry over to other parameters or another approver.
    tampered = genuine.model_copy(
        update={"action": genuine.action.model_copy(update={"parameters": {"amount": 9}})}
    )
    reassigned = genuine.model_copy(update={"approvers": [Approver(user="mallory", roles=["finance"])]})
    for event in (unsigned, forged, tampered, reassigned):
        assert "signature does not verify" in denial(only(revalidate(event, CTX, NOW))).reasons[0]


def test_without_the_approvals_key_no_human_approval_passes() -> None:
    approved = _human_approved(refund(2500))
    reason = denial(only(revalidate(approved, Context(BUNDLE, AGENTS, TOOLS), NOW))).reasons[0]
    assert "no approvals public key" in reason


def test_an_approval_lets_one_action_through() -> None:
    approved = _human_approved(refund(2500))
    assert "already used" in denial(only(revalidate(approved, CTX, NOW, used=True))).reasons[0]


def test_a_quorum_on_a_permit_is_asked_for(tmp_path: Path) -> None:
    ctx = _with(tmp_path, REFUNDS.replace('@approval("finance")', '@approval("finance")\n@quorum("2")'))
    request = decided(refund(2500), ctx)
    assert isinstance(request, ApprovalRequested)
    assert request.decision.approvals_required == 2
    assert "with approval by 2 people in finance" in request.decision.reasons[0]


def test_a_policy_may_ask_for_a_decision_sooner(tmp_path: Path) -> None:
    ctx = _with(tmp_path, REFUNDS.replace('@approval("finance")', '@approval("finance")\n@expires("30m")'))
    request = decided(refund(2500), ctx)
    assert isinstance(request, ApprovalRequested)
    assert request.decision.approval_timeout_s == 1800
    default = decided(refund(2500))
    assert isinstance(default, ApprovalRequested)
    assert default.decision.approval_timeout_s is None


@pytest.mark.parametrize(
    ("annotations", "error"),
    [
        ('@quorum("2")', "needs @approval"),
        ('@approval("finance")\n@quorum("0")', "whole number from 1 to 20"),
        ('@approval("finance")\n@quorum("two")', "whole number from 1 to 20"),
        ('@expires("1h")', "needs @approval"),
        ('@approval("finance")\n@expires("soon")', "such as 90s, 30m, 4h or 2d"),
        ('@approval("finance")\n@expires("0s")', "such as 90s, 30m, 4h or 2d"),
    ],
)
def test_a_bad_quorum_or_deadline_makes_the_bundle_invalid(
    tmp_path: Path, annotations: str, error: str
) -> None:
    text = f'{annotations}\npermit (principal, action == Action::"issue_refund", resource);\n'
    bundle = _bundle(tmp_path, text)
    assert bundle.error is not None
    assert error in bundle.error


def test_an_approval_request_carries_its_binding_and_who_may_not_approve() -> None:
    request = decided(refund(2500).model_copy(update={"triggered_by": "kim"}))
    assert isinstance(request, ApprovalRequested)
    assert request.action_hash == action_hash(request.action, request.envelope.run_id or "", BUNDLE.hash)
    assert (request.agent_owner, request.triggered_by) == ("maria.lopez@example.com", "kim")


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
