"""Tenants as boundaries in the policy decision: each tenant's actions are decided by the base
policies plus its own (`tenants/<tenant>/`), under that set's hash, and Cedar sees the tenant."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from charter import serde
from charter.events import ActionApproved, ActionProposed, Event, PolicyReloaded
from charter.watch import DirectoryWatcher
from services.audit import redecide
from services.policy.bundle import PATTERNS, PolicyBundle
from services.policy.check import Case, check, run_case
from services.policy.decide import Context, decide, revalidate, usage_keys
from services.policy.limits import Usage
from services.policy.service import reloaded
from services.policy.whatif import what_if
from tests.conftest import REPO
from tests.unit.test_policy import (
    AGENTS,
    APPROVALS_KEY,
    NOW,
    TOOLS,
    _human_approved,
    decided,
    denial,
    only,
    proposal,
    refund,
)

FREEZE = """
@id("acme-refund-freeze")
@reason("acme's refunds are frozen while its books are audited")
forbid (principal, action == Action::"issue_refund", resource);
"""
# A permit the base set lacks: outside a compensation, no refund is cancelled.
GLOBEX_CANCELS = """
@id("globex-cancels")
permit (principal in Role::"support", action == Action::"cancel_refund", resource);
"""


def _policies(tmp_path: Path, tenants: dict[str, dict[str, str]] | None = None) -> Path:
    """The shipped policy directory (with its `tests/` cases), plus tenants' own files."""
    root = tmp_path / "policies"
    shutil.copytree(REPO / "policies", root)
    for tenant, files in (tenants or {}).items():
        _write(root, tenant, files)
    return root


def _write(root: Path, tenant: str, files: dict[str, str]) -> None:
    own = root / "tenants" / tenant
    own.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (own / name).write_text(text)


def _ctx(root: Path) -> Context:
    return Context(PolicyBundle.load(root), AGENTS, TOOLS, approvals_key=APPROVALS_KEY)


def under(event: ActionProposed, tenant: str) -> ActionProposed:
    return event.model_copy(update={"envelope": event.envelope.model_copy(update={"tenant": tenant})})


def test_the_same_proposal_is_decided_by_each_tenants_own_set(tmp_path: Path) -> None:
    ctx = _ctx(_policies(tmp_path, {"acme": {"freeze.cedar": FREEZE}}))
    acme = denial(decided(under(refund(40), "acme"), ctx))
    assert acme.policy_ids == ["acme-refund-freeze"]
    assert "frozen while its books are audited" in acme.reasons[0]
    globex = decided(under(refund(40), "globex"), ctx)
    assert isinstance(globex, ActionApproved)
    assert globex.decision.policy_ids == ["refund-small"]


def test_a_tenants_permit_widens_its_own_set_alone(tmp_path: Path) -> None:
    ctx = _ctx(_policies(tmp_path, {"globex": {"cancels.cedar": GLOBEX_CANCELS}}))
    cancel = proposal(
        "cancel_refund", {"refund_id": "rf-0123456789", "order_id": "A-1001"}, resource="order/A-1001"
    )
    assert "no policy permits cancel_refund" in denial(decided(under(cancel, "acme"), ctx)).reasons[0]
    out = decided(under(cancel, "globex"), ctx)
    assert isinstance(out, ActionApproved)
    assert out.decision.policy_ids == ["globex-cancels"]


def test_each_decision_names_its_tenants_set_and_a_tenant_without_one_gets_the_base(tmp_path: Path) -> None:
    root = _policies(
        tmp_path, {"acme": {"freeze.cedar": FREEZE}, "globex": {"cancels.cedar": GLOBEX_CANCELS}}
    )
    ctx = _ctx(root)
    base = PolicyBundle.load(REPO / "policies")
    acme, globex = ctx.bundle.tenants["acme"], ctx.bundle.tenants["globex"]
    assert len({base.hash, acme.hash, globex.hash}) == 3
    assert ctx.bundle.hash == base.hash
    assert denial(decided(under(refund(40), "acme"), ctx)).policy_hash == acme.hash
    out = decided(under(refund(40), "globex"), ctx)
    assert isinstance(out, ActionApproved)
    assert out.decision.policy_hash == globex.hash
    initech = decided(under(refund(40), "initech"), ctx)
    assert isinstance(initech, ActionApproved)
    assert initech.decision.policy_hash == base.hash


def test_an_empty_tenant_directory_is_the_base_set(tmp_path: Path) -> None:
    root = _policies(tmp_path)
    (root / "tenants" / "acme").mkdir(parents=True)
    bundle = PolicyBundle.load(root)
    assert bundle.tenants == {}
    assert bundle.for_tenant("acme").hash == PolicyBundle.load(REPO / "policies").hash


def test_an_approval_is_revalidated_under_its_tenants_set(tmp_path: Path) -> None:
    ctx = _ctx(
        _policies(
            tmp_path,
            {"acme": {"note.cedar": '@id("acme-note") forbid (principal, action, resource) when { false };'}},
        )
    )
    approved = _human_approved(under(refund(2500), "acme"), ctx)
    assert approved.decision.policy_hash == ctx.bundle.tenants["acme"].hash
    out = only(revalidate(approved, ctx, NOW))
    assert isinstance(out, ActionApproved)
    assert out.executable
    # Compared with the base hash, the same set would look changed since the approval.
    assert not any("policy changed" in r for r in out.decision.reasons)


TENANT_AWARE = """
@id("acme-reads")
permit (principal, action == Action::"lookup_order", resource) when { context.tenant == "acme" };

@id("no-globex-agents")
forbid (principal, action, resource) when { principal.tenant == "globex" };

@id("everyone-notifies")
permit (principal, action == Action::"notify_customer", resource);
"""


def _tenant_aware(tmp_path: Path) -> Path:
    root = _policies(tmp_path)
    for path in root.glob("*.cedar"):
        path.unlink()
    (root / "tenancy.cedar").write_text(TENANT_AWARE)
    return root


def test_policies_on_context_tenant_and_principal_tenant_check_clean(tmp_path: Path) -> None:
    root = _tenant_aware(tmp_path)
    _, problems = check(root, AGENTS, TOOLS)
    assert problems == []
    # The schema knows the tenant's type: a string compared with a number is refused.
    (root / "tenancy.cedar").write_text(
        TENANT_AWARE.replace('context.tenant == "acme"', "context.tenant > 3")
    )
    _, problems = check(root, AGENTS, TOOLS)
    assert [p.policy for p in problems] == ["acme-reads"]


def test_policies_on_the_tenant_decide_as_written(tmp_path: Path) -> None:
    ctx = _ctx(_tenant_aware(tmp_path))
    lookup = proposal("lookup_order", {"order_id": "A-1001"})
    notify = proposal("notify_customer", {"customer": "c-1", "message": "hi"})
    assert isinstance(decided(under(lookup, "acme"), ctx), ActionApproved)
    assert "no policy permits lookup_order" in denial(decided(under(lookup, "initech"), ctx)).reasons[0]
    assert isinstance(decided(under(notify, "initech"), ctx), ActionApproved)
    # The same agent, decided for acme first: its entity must not be reused for globex.
    assert isinstance(decided(under(notify, "acme"), ctx), ActionApproved)
    assert denial(decided(under(notify, "globex"), ctx)).policy_ids == ["no-globex-agents"]


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"bad.cedar": "permit (principal, action, resource) when { ;"}, "tenants/acme/bad.cedar"),
        ({"dup.cedar": '@id("refund-small") permit (principal, action, resource);'}, "used twice"),
        ({"limits.yaml": "defaults: {max_steps: zero}"}, "tenants/acme/limits.yaml"),
    ],
)
def test_a_tenant_whose_files_do_not_load_is_denied_everything_and_no_other_tenant_is(
    tmp_path: Path, files: dict[str, str], fragment: str
) -> None:
    root = _policies(tmp_path, {"acme": files, "globex": {"freeze.cedar": FREEZE}})
    ctx = _ctx(root)
    assert ctx.bundle.error is None
    reason = denial(decided(under(proposal("lookup_order", {"order_id": "A-1001"}), "acme"), ctx)).reasons[0]
    assert reason.startswith("policy set invalid for tenant 'acme'")
    assert fragment in reason
    assert isinstance(decided(under(refund(40), "initech"), ctx), ActionApproved)
    assert denial(decided(under(refund(40), "globex"), ctx)).policy_ids == ["acme-refund-freeze"]
    _, problems = check(root, AGENTS, TOOLS)
    assert [(p.file, p.policy) for p in problems] == [(str(root / "tenants" / "acme"), "-")]
    assert fragment in problems[0].message


def test_check_validates_a_tenants_own_files(tmp_path: Path) -> None:
    typo = (
        '@id("acme-typo")\npermit (principal, action == Action::"issue_refund", resource)\n'
        "when { context.parameters.amout < 3 };\n"
    )
    root = _policies(
        tmp_path, {"acme": {"typo.cedar": typo, "limits.yaml": "agents: {ghost: {max_steps: 1}}"}}
    )
    (root / "tenants" / "acme" / "resources.yaml").write_text("resources: []\n")
    _, problems = check(root, AGENTS, TOOLS)
    own = root / "tenants" / "acme"
    assert [(p.file, p.line, p.policy) for p in problems] == [
        (str(own / "typo.cedar"), 1, "acme-typo"),
        (str(own / "limits.yaml"), 0, "agents"),
        (str(own / "resources.yaml"), 0, "-"),
    ]


def test_a_tenants_limits_replace_the_base_and_count_its_own_usage(tmp_path: Path) -> None:
    # One refund (5 cost units) a day for acme; the base allows 2,500 units a day on refunds.
    root = _policies(tmp_path, {"acme": {"limits.yaml": "tools: {issue_refund: {budget_per_day: 5}}\n"}})
    ctx = _ctx(root)
    usage = Usage()
    refunds = [
        under(refund(40, run=run), run.split("-")[0]) for run in ("globex-1", "acme-1", "acme-2", "globex-2")
    ]
    outcomes = [decided(p, ctx, usage) for p in refunds]
    # globex's refund is not counted against acme's budget, acme's first is, and globex is still
    # held to the base's.
    assert [type(o).__name__ for o in outcomes] == [
        "ActionApproved",
        "ActionApproved",
        "ActionRejected",
        "ActionApproved",
    ]
    assert denial(outcomes[2]).limit == "tool_budget_per_day"
    assert ctx.bundle.tenants["acme"].limits.defaults.max_steps is None  # replaced, not merged
    assert ctx.bundle.limits.defaults.max_steps == 20
    # The service loads a batch's counters by usage_keys: they must be the ones decide charges.
    assert usage.touched <= {k for p in refunds for k in usage_keys(p, ctx, NOW)}


def test_reload_notices_a_new_tenant_directory_and_a_file_moved_between_tenants(tmp_path: Path) -> None:
    root = _policies(tmp_path, {"acme": {"freeze.cedar": FREEZE}})
    watcher = DirectoryWatcher(root, PATTERNS)
    _write(root, "globex", {"freeze.cedar": FREEZE.replace("acme-", "globex-")})
    assert watcher.changed()
    assert sorted(PolicyBundle.load(root).tenants) == ["acme", "globex"]
    assert not watcher.changed()
    # A move keeps the file's name, size and time; only the directories' times tell.
    for tenant in ("acme", "globex", "initech"):
        (root / "tenants" / tenant).mkdir(exist_ok=True)
        os.utime(root / "tenants" / tenant, ns=(0, 0))
    watcher = DirectoryWatcher(root, PATTERNS)
    (root / "tenants" / "acme" / "freeze.cedar").rename(root / "tenants" / "initech" / "freeze.cedar")
    assert watcher.changed()
    ctx = _ctx(root)
    assert isinstance(decided(under(refund(40), "acme"), ctx), ActionApproved)
    assert denial(decided(under(refund(40), "initech"), ctx)).policy_ids == ["acme-refund-freeze"]


def _announced(bundle: PolicyBundle) -> list[PolicyReloaded]:
    events = [
        reloaded(b, b.tenant or "default", f"r-{n}", NOW)
        for n, b in enumerate([bundle, *bundle.tenants.values()])
    ]
    return [e for e in map(serde.decode, map(serde.encode, events)) if isinstance(e, PolicyReloaded)]


def test_each_set_is_announced_with_the_files_that_rebuild_it(tmp_path: Path) -> None:
    root = _policies(
        tmp_path, {"acme": {"freeze.cedar": FREEZE, "limits.yaml": "defaults: {max_steps: 2}\n"}}
    )
    bundle = PolicyBundle.load(root)
    base, acme = _announced(bundle)
    assert (base.envelope.tenant, acme.envelope.tenant) == ("default", "acme")
    assert acme.policy_hash == bundle.tenants["acme"].hash != base.policy_hash == bundle.hash
    assert "tenants/acme/freeze.cedar" in acme.files
    rebuilt = PolicyBundle.of(dict(acme.sources))
    assert rebuilt.hash == acme.policy_hash
    assert (rebuilt.tenant, rebuilt.limits_scope, rebuilt.limits.defaults.max_steps) == ("acme", "acme", 2)
    assert "acme-refund-freeze" in rebuilt.infos


def test_the_audits_replay_decides_each_tenant_under_its_announced_set(tmp_path: Path) -> None:
    ctx = _ctx(_policies(tmp_path, {"acme": {"freeze.cedar": FREEZE}}))
    history: list[Event] = [*_announced(ctx.bundle)]
    usage = Usage()
    for tenant in ("acme", "globex"):
        proposed = under(refund(40, run=f"run-{tenant}"), tenant)
        history += [proposed, *decide(proposed, ctx, usage, NOW)]
    result = redecide.replay(history, AGENTS, TOOLS, APPROVALS_KEY)
    assert result.inputs == 2
    assert not any("policy version" in why for why in result.skipped), result.skipped
    assert result.same, result.divergences


def test_what_if_decides_each_recorded_proposal_by_its_tenants_candidate_set(tmp_path: Path) -> None:
    current = _ctx(REPO / "policies")
    history: list[Event] = []
    for tenant in ("acme", "globex"):
        proposed = under(refund(40, run=f"run-{tenant}"), tenant)
        history += [proposed, *decide(proposed, current, Usage(), NOW)]
    candidate = _policies(tmp_path, {"acme": {"freeze.cedar": FREEZE}})
    report = what_if([serde.encode(e) for e in history], _ctx(candidate), NOW)
    assert report.replayed == 2
    [change] = report.changes
    assert (change.run_id, change.before, change.after) == ("run-acme", "allow", "deny")


def test_a_policy_case_may_name_its_tenant(tmp_path: Path) -> None:
    ctx = _ctx(_policies(tmp_path, {"acme": {"freeze.cedar": FREEZE}}))
    case = Case(
        name="acme's refunds are frozen",
        agent="support-refunds",
        tool="issue_refund",
        resource="order/A-1001",
        parameters={"order_id": "A-1001", "amount": 40, "currency": "EUR"},
        expect="deny",
        policies=["acme-refund-freeze"],
        tenant="acme",
    )
    assert run_case(case, ctx, NOW).failures == []
    assert run_case(case.model_copy(update={"tenant": "globex"}), ctx, NOW).failures == [
        "expected deny, got allow",
        "expected policies ['acme-refund-freeze'], got ['refund-small']",
    ]
