"""The policy decision for one proposed action: allow, deny, or allow once a human approves.

Checks run from the cheapest and most certain to Cedar itself, and any doubt denies: an
unknown agent or tool, a tool the agent does not hold, parameters the tool would refuse, a
policy set that did not load, or a policy that errors while evaluating.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pydantic import ValidationError

from charter.agents import Agent
from charter.clock import derive_id
from charter.events import ActionApproved, ActionProposed, ActionRejected, ApprovalRequested, Decision, Event
from charter.tools import ToolSpec
from services.policy.engine import PolicySet, Request


def decide(
    proposed: ActionProposed,
    policies: PolicySet,
    agents: Mapping[str, Agent],
    tools: Mapping[str, ToolSpec],
    now: datetime,
) -> list[Event]:
    action = proposed.action
    agent_id = proposed.envelope.agent or ""
    agent = agents.get(agent_id)
    refusal = _precheck(proposed, policies, agent, tools)
    if refusal or agent is None:
        return [_reject(proposed, policies, (), [refusal or f"unknown agent {agent_id!r}"], now)]
    try:
        verdict = policies.evaluate(
            Request(
                agent=agent.id,
                roles=tuple(agent.roles),
                agent_attrs={"owner": agent.owner, "environment": agent.environment},
                tool=action.tool,
                resource=action.resource,
                context={"parameters": action.parameters, "environment": action.environment},
            )
        )
    except ValueError as exc:
        return [_reject(proposed, policies, (), [f"request cannot be evaluated: {exc}"], now)]
    if verdict.errors:
        return [
            _reject(
                proposed, policies, verdict.policy_ids, [f"policy error: {e}" for e in verdict.errors], now
            )
        ]
    if not verdict.allowed:
        reasons = [_explain(policies, pid, "forbidden by") for pid in verdict.policy_ids]
        return [
            _reject(
                proposed,
                policies,
                verdict.policy_ids,
                reasons or [f"no policy permits {action.tool} for agent {agent.id}"],
                now,
            )
        ]
    roles = sorted({r for pid in verdict.policy_ids for r in policies.infos[pid].approval_roles})
    reasons = [_explain(policies, pid, "permitted by") for pid in verdict.policy_ids]
    if roles:
        decision = _decision("approval", policies, verdict.policy_ids, reasons, roles)
        return [
            ApprovalRequested.caused_by(
                proposed,
                label="policy",
                now=now,
                approval_id=derive_id(proposed.event_id, "approval"),
                action=action,
                decision=decision,
            )
        ]
    decision = _decision("allow", policies, verdict.policy_ids, reasons, [])
    return [
        ActionApproved.caused_by(
            proposed, label="policy", now=now, action=action, decision=decision, approved_by="policy"
        )
    ]


def _precheck(
    proposed: ActionProposed, policies: PolicySet, agent: Agent | None, tools: Mapping[str, ToolSpec]
) -> str | None:
    """The reason to deny before asking Cedar, if there is one."""
    action = proposed.action
    if policies.error:
        return f"policy set invalid, denying everything: {policies.error}"
    if agent is None:
        return f"unknown agent {proposed.envelope.agent!r}"
    spec = tools.get(action.tool)
    if spec is None:
        return f"unknown tool {action.tool!r}"
    if action.tool not in agent.tools:
        return f"tool {action.tool!r} is not granted to agent {agent.id}"
    if action.environment != agent.environment:
        return f"action environment {action.environment!r} is not agent {agent.id}'s ({agent.environment!r})"
    try:
        spec.params.model_validate(action.parameters)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"parameters invalid for {action.tool}: {where}: {first['msg']}"
    return None


def _explain(policies: PolicySet, policy_id: str, verb: str) -> str:
    info = policies.infos.get(policy_id)
    text = f"{verb} {policy_id}"
    if info and info.approval_roles:
        text += f" with approval by {' or '.join(info.approval_roles)}"
    if info and info.reason:
        text += f": {info.reason}"
    return text


def _decision(
    outcome: str, policies: PolicySet, policy_ids: tuple[str, ...], reasons: list[str], roles: list[str]
) -> Decision:
    return Decision(
        outcome=outcome,
        policy_ids=list(policy_ids),
        policy_hash=policies.hash,
        reasons=reasons,
        approval_roles=roles,
    )


def _reject(
    proposed: ActionProposed,
    policies: PolicySet,
    policy_ids: tuple[str, ...],
    reasons: list[str],
    now: datetime,
) -> ActionRejected:
    return ActionRejected.caused_by(
        proposed,
        label="policy",
        now=now,
        action=proposed.action,
        decision=_decision("deny", policies, policy_ids, reasons, []),
        rejected_by="policy",
    )
