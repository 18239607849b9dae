"""The policy decision for one proposed action: allow, deny, or allow once a human approves.

Checks run from the cheapest and most certain to Cedar itself, and any doubt denies: a policy
bundle that did not load, an unknown agent, tool or resource, a tool the agent does not hold,
an action outside the agent's environment (segmentation), parameters the tool would refuse, a
kill switch, a loop or too many steps, a policy that errors while evaluating, and at the end
the budgets and rates. A denial by a limit names the limit.

A proposal is decided only if it is genuine: signed by the planner, or, for one a person
amended while approving, by the approvals service (`forged` says why not). Anyone else who can
write to `actions.proposed` could otherwise act as any agent.

Each action is decided by its tenant's policy set (the base policies plus the tenant's own, see
services.policy.bundle), and its decision names that set's hash; a tenant whose set does not
load is denied everything.

A human's approval is not a bypass: `revalidate` decides the approved action again against the
current bundle and kill switches before it may run, and the decision names both policy hashes.
It also checks that the approval is genuine (signed by the approvals service), used once, and
still enough: as many distinct approvers, holding the roles policy names now, as it asks now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache

from pydantic import ValidationError

from charter.agents import Agent
from charter.binding import action_hash
from charter.clock import derive_id
from charter.events import (
    Action,
    ActionApproved,
    ActionProposed,
    ActionRejected,
    ApprovalRequested,
    Decision,
    Event,
)
from charter.killswitch import KillSwitch, matching
from charter.limits import AgentLimits, combine
from charter.signing import Verifier
from charter.tools import ToolSpec
from services.policy import limits
from services.policy.bundle import PolicyBundle
from services.policy.engine import Request


@dataclass(frozen=True)
class Context:
    """Everything a decision reads besides the event: the world as the service knows it now."""

    bundle: PolicyBundle
    agents: Mapping[str, Agent]
    tools: Mapping[str, ToolSpec]
    switches: Sequence[KillSwitch] = ()
    # The approvals service's public key: without it no human approval can be accepted.
    approvals_key: Verifier | None = None
    # The planner's public key: without it no proposal can be decided.
    planner_key: Verifier | None = None

    def for_tenant(self, tenant: str) -> Context:
        """The context `tenant`'s actions are decided in: the same, under its own policy set."""
        bundle = self.bundle.for_tenant(tenant)
        return self if bundle is self.bundle else replace(self, bundle=bundle)


@dataclass(frozen=True)
class Ruling:
    outcome: str  # allow | approval | deny
    policy_ids: tuple[str, ...]
    reasons: list[str]
    roles: list[str]
    limit: str | None = None
    quorum: int = 1
    expires_s: float | None = None


def limits_for(ctx: Context, agent: Agent) -> AgentLimits:
    return _limits(agent.limits, ctx.bundle.limits.agents.get(agent.id, _NONE), ctx.bundle.limits.defaults)


_NONE = AgentLimits()


@lru_cache(maxsize=1024)
def _limits(own: AgentLimits, set_for_agent: AgentLimits, defaults: AgentLimits) -> AgentLimits:
    # Limits are frozen models, so a policy bundle's combination is worked out once per agent.
    return combine(own, set_for_agent, defaults)


def binding(proposed: ActionProposed, ctx: Context) -> limits.Limits | None:
    """The limits this proposal is held to, if its agent and tool exist."""
    ctx = ctx.for_tenant(proposed.envelope.tenant)
    agent = ctx.agents.get(proposed.envelope.agent or "")
    spec = ctx.tools.get(proposed.action.tool)
    if agent is None or spec is None:
        return None
    tool = ctx.bundle.limits.tools.get(spec.name)
    return limits.Limits(limits_for(ctx, agent), tool, spec.cost_units, ctx.bundle.limits_scope)


def usage_keys(proposed: ActionProposed, ctx: Context, now: datetime) -> list[limits.CounterKey]:
    """The counters the decision on `proposed` may read or write: what a batch loads."""
    held = binding(proposed, ctx)
    return limits.keys_for(proposed, held, now) if held else []


def forged(proposed: ActionProposed, ctx: Context) -> str | None:
    """Why the proposal cannot be decided at all, if it did not come from who alone may send it."""
    what = f"proposal {proposed.event_id} (agent {proposed.envelope.agent!r}, tool {proposed.action.tool!r})"
    if proposed.signature is None:
        return f"{what} is not signed: only the planner, or a person amending through approvals, proposes"
    if proposed.amended_by is not None:
        if ctx.approvals_key is not None and ctx.approvals_key.verify(proposed):
            return None
        by = proposed.amended_by
        return f"{what} claims to be amended by {by!r}, but the approvals service did not sign it"
    if ctx.planner_key is not None and ctx.planner_key.verify(proposed):
        return None
    return f"{what}: its signature does not verify against the planner's key"


def decide(proposed: ActionProposed, ctx: Context, usage: limits.Usage, now: datetime) -> list[Event]:
    tenant = proposed.envelope.tenant
    ctx = ctx.for_tenant(tenant)
    agent = ctx.agents.get(proposed.envelope.agent or "")
    ruling = _precheck(proposed.action, proposed.envelope.agent, ctx)
    held = binding(proposed, ctx)
    if ruling is None and agent is not None and held is not None:
        breach = limits.count_proposal(proposed, held.agent, usage)
        ruling = (
            _deny(breach.reason, limit=breach.limit)
            if breach
            else _cedar(proposed.action, agent, tenant, ctx)
        )
        if ruling.outcome != "deny":
            breach = limits.admit(proposed, held, usage=usage, now=now)
            if breach:
                ruling = _deny(breach.reason, limit=breach.limit, policy_ids=ruling.policy_ids)
    ruling = ruling or _deny(f"unknown agent {proposed.envelope.agent!r}")
    return [_outcome(proposed, proposed.action, ruling, ctx, now)]


def revalidate(approved: ActionApproved, ctx: Context, now: datetime, *, used: bool = False) -> list[Event]:
    """Decide a human-approved action again, as policy stands now; limits were charged when it
    was first proposed and are not charged twice. `used`: its approval already let an action
    through once."""
    previous = approved.decision.policy_hash
    tenant = approved.envelope.tenant
    ctx = ctx.for_tenant(tenant)
    agent = ctx.agents.get(approved.envelope.agent or "")
    ruling = _genuine(approved, ctx, used) or _precheck(approved.action, approved.envelope.agent, ctx)
    if ruling is None and agent is not None:
        ruling = _cedar(approved.action, agent, tenant, ctx)
        if ruling.outcome == "approval":
            ruling = _enough(approved, ruling)
    ruling = ruling or _deny(f"unknown agent {approved.envelope.agent!r}")
    changed = (
        f" (policy changed since approval: {previous[:12]} -> {ctx.bundle.hash[:12]})"
        if previous != ctx.bundle.hash
        else ""
    )
    decision = Decision(
        outcome="deny" if ruling.outcome == "deny" else "allow",
        policy_ids=list(ruling.policy_ids),
        policy_hash=ctx.bundle.hash,
        reasons=[f"revalidation: {r}{changed}" for r in ruling.reasons],
        approval_roles=approved.decision.approval_roles,
        limit=ruling.limit,
        previous_policy_hash=previous,
        approvals_required=approved.decision.approvals_required,
    )
    event_id = derive_id(approved.event_id, "revalidated")
    if ruling.outcome == "deny":
        return [
            ActionRejected.caused_by(
                approved,
                event_id=event_id,
                now=now,
                action=approved.action,
                decision=decision,
                rejected_by="policy",
            )
        ]
    return [
        ActionApproved.caused_by(
            approved,
            event_id=event_id,
            now=now,
            action=approved.action,
            decision=decision,
            approved_by=approved.approved_by,
            revalidated=True,
            approval_id=approved.approval_id,
            approvers=approved.approvers,
        )
    ]


def _genuine(approved: ActionApproved, ctx: Context, used: bool) -> Ruling | None:
    """A denial if the approval did not come from the approvals service, or was used before."""
    if ctx.approvals_key is None:
        return _deny("no approvals public key is configured: no human approval can be verified")
    if not ctx.approvals_key.verify(approved):
        return _deny("the approval's signature does not verify: it did not come from the approvals service")
    if not approved.approval_id or not approved.approvers:
        return _deny("the approval names no approval id or approvers")
    if used:
        return _deny(f"approval {approved.approval_id} was already used; an approval lets one action through")
    return None


def _enough(approved: ActionApproved, ruling: Ruling) -> Ruling:
    """The ruling if the approvers satisfy policy as it stands now, else a denial saying why."""
    qualified = {a.user for a in approved.approvers if set(a.roles) & set(ruling.roles)}
    if len(qualified) >= ruling.quorum:
        return ruling
    roles = " or ".join(ruling.roles)
    return _deny(
        f"policy now requires {ruling.quorum} approval(s) by {roles}; "
        f"this action has {len(qualified)} ({', '.join(sorted(qualified)) or 'none qualified'})",
        policy_ids=ruling.policy_ids,
    )


def _precheck(action: Action, agent_id: str | None, ctx: Context) -> Ruling | None:
    """A denial that needs no Cedar, if there is one."""
    bundle = ctx.bundle
    if bundle.error or bundle.cedar is None:
        return _invalid(bundle)
    agent = ctx.agents.get(agent_id or "")
    if agent is None:
        return _deny(f"unknown agent {agent_id!r}")
    spec = ctx.tools.get(action.tool)
    if spec is None:
        return _deny(f"unknown tool {action.tool!r}")
    if action.tool not in agent.tools:
        return _deny(f"tool {action.tool!r} is not granted to agent {agent.id}")
    if action.environment != agent.environment:
        return _deny(
            f"action environment {action.environment!r} is not agent {agent.id}'s ({agent.environment!r})"
        )
    resource = bundle.resources.lookup(action.resource)
    if resource is None:
        return _deny(f"resource {action.resource!r} is not in the resource catalog")
    if resource["environment"] != agent.environment:
        return _deny(
            f"environment segmentation: {agent.environment} agent {agent.id} may not act on "
            f"{resource['environment']} resource {action.resource}"
        )
    try:
        spec.params.model_validate(action.parameters)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _deny(f"parameters invalid for {action.tool}: {where}: {first['msg']}")
    switch = matching(ctx.switches, agent.id, action.tool)
    if switch is not None:
        return _deny(switch.describe(), limit="kill_switch")
    return None


def _invalid(bundle: PolicyBundle) -> Ruling:
    if bundle.tenant is None:
        return _deny(f"policy set invalid, denying everything: {bundle.error}")
    return _deny(f"policy set invalid for tenant {bundle.tenant!r}, denying all its actions: {bundle.error}")


def _cedar(action: Action, agent: Agent, tenant: str, ctx: Context) -> Ruling:
    bundle = ctx.bundle
    if bundle.cedar is None:
        return _invalid(bundle)
    try:
        verdict = bundle.cedar.evaluate(
            Request(
                tenant=tenant,
                agent=agent.id,
                roles=tuple(agent.roles),
                agent_attrs={"owner": agent.owner, "environment": agent.environment},
                tool=action.tool,
                resource=action.resource,
                resource_attrs=bundle.resources.lookup(action.resource) or {},
                context={
                    "parameters": action.parameters,
                    "environment": action.environment,
                    "compensation": action.compensates is not None,
                },
            )
        )
    except ValueError as exc:
        return _deny(f"request cannot be evaluated: {exc}")
    if verdict.errors:
        return _deny("; ".join(f"policy error: {e}" for e in verdict.errors), policy_ids=verdict.policy_ids)
    if not verdict.allowed:
        reasons = [_explain(bundle, pid, "forbidden by") for pid in verdict.policy_ids]
        return Ruling(
            "deny",
            verdict.policy_ids,
            reasons or [f"no policy permits {action.tool} for agent {agent.id}"],
            [],
        )
    infos = [bundle.infos[pid] for pid in verdict.policy_ids]
    roles = sorted({r for info in infos for r in info.approval_roles})
    # Several permits asking for approval: the largest quorum stands.
    quorum = max((info.quorum for info in infos if info.approval_roles), default=1)
    # ...and the shortest deadline.
    expires = min((i.expires_s for i in infos if i.approval_roles and i.expires_s), default=None)
    reasons = [_explain(bundle, pid, "permitted by") for pid in verdict.policy_ids]
    outcome = "approval" if roles else "allow"
    return Ruling(outcome, verdict.policy_ids, reasons, roles, quorum=quorum, expires_s=expires)


def _deny(reason: str, *, limit: str | None = None, policy_ids: tuple[str, ...] = ()) -> Ruling:
    return Ruling("deny", policy_ids, [reason], [], limit)


def _explain(bundle: PolicyBundle, policy_id: str, verb: str) -> str:
    info = bundle.infos.get(policy_id)
    text = f"{verb} {policy_id}"
    if info and info.approval_roles:
        who = " or ".join(info.approval_roles)
        text += (
            f" with approval by {info.quorum} people in {who}"
            if info.quorum > 1
            else f" with approval by {who}"
        )
    if info and info.reason:
        text += f": {info.reason}"
    return text


def _outcome(proposed: ActionProposed, action: Action, ruling: Ruling, ctx: Context, now: datetime) -> Event:
    policy_hash = ctx.bundle.hash
    decision = Decision(
        outcome=ruling.outcome,
        policy_ids=list(ruling.policy_ids),
        policy_hash=policy_hash,
        reasons=ruling.reasons,
        approval_roles=ruling.roles,
        limit=ruling.limit,
        approvals_required=ruling.quorum,
        approval_timeout_s=ruling.expires_s,
    )
    if ruling.outcome == "deny":
        return ActionRejected.caused_by(
            proposed, label="policy", now=now, action=action, decision=decision, rejected_by="policy"
        )
    if ruling.outcome == "approval":
        return ApprovalRequested.caused_by(
            proposed,
            label="policy",
            now=now,
            approval_id=derive_id(proposed.event_id, "approval"),
            action=action,
            decision=decision,
            action_hash=action_hash(action, proposed.envelope.run_id or "", policy_hash),
            agent_owner=agent.owner if (agent := ctx.agents.get(proposed.envelope.agent or "")) else None,
            triggered_by=proposed.triggered_by,
            amended_by=proposed.amended_by,
        )
    return ActionApproved.caused_by(
        proposed, label="policy", now=now, action=action, decision=decision, approved_by="policy"
    )
