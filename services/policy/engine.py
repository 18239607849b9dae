"""Cedar policies, parsed once, evaluated per request.

Policies are named by their `@id("...")` annotation, or `file.cedar#N` without one, and those
names are what decisions report. `@approval("role")` on a permit means the action may run only
once a human holding that role approves it (several roles: `@approval("finance,it-security")`);
`@quorum("2")` beside it asks for that many distinct approvers, and `@expires("30m")` (s, m, h or
d) for a decision sooner than the approvals service's default deadline.
`@reason("...")` gives the sentence a decision shows for that policy.

A request maps as: principal `Agent::"<id>"` (member of its roles, with `owner`,
`environment` and `tenant`), action `Action::"<tool>"`, resource `Resource::"<target>"` (with
the attributes the resource catalog gives it), context `{parameters, environment, compensation,
tenant}`. The tenant is the proposal's: one agent may act for several tenants, so the same
agent is a different principal in each.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import cedarpy

from charter import telemetry

_I64 = 2**63
_RECENT_RESOURCES = 4096
_TRACER = telemetry.tracer("charter.policy.cedar")


@dataclass(frozen=True)
class PolicyInfo:
    id: str
    file: str
    effect: str
    approval_roles: tuple[str, ...]
    reason: str | None
    quorum: int = 1
    expires_s: float | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy_ids: tuple[str, ...]
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    tenant: str
    agent: str
    roles: tuple[str, ...]
    agent_attrs: Mapping[str, Any]
    tool: str
    resource: str
    resource_attrs: Mapping[str, Any]
    context: Mapping[str, Any]


class CedarPolicies:
    """Every `*.cedar` file of a policy directory as one parsed set (raises ValueError if any
    file does not parse, uses an id twice, or puts @approval on a forbid).

    Cedar evaluates every policy it is given, so each tool gets the subset whose action scope
    can match it (those scoped to it, and those scoped to any action). A policy scoped to other
    actions can never be satisfied by this one, so the decision and its reasons are the same.
    """

    def __init__(self, texts: Sequence[tuple[str, str]]) -> None:
        self.infos, self._merged = _merge(texts)
        # Parsed whole once, so that a set that does not load fails here, not at first use.
        cedarpy.PolicySet.from_json_str(json.dumps(self._merged))
        self._by_tool: dict[str, Any] = {}
        self._principals: dict[tuple[Any, ...], Any] = {}
        self._entities: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def _for_tool(self, tool: str) -> Any:
        policies = self._by_tool.get(tool)
        if policies is None:
            static = {
                pid: p for pid, p in self._merged["staticPolicies"].items() if _may_apply(p["action"], tool)
            }
            policies = cedarpy.PolicySet.from_json_str(json.dumps({**self._merged, "staticPolicies": static}))
            self._by_tool[tool] = policies
        return policies

    def _principal(self, request: Request) -> Any:
        """The agent's entities, parsed once per agent and tenant rather than once per request."""
        key = _principal_key(request)
        handle = self._principals.get(key)
        if handle is None:
            entities = [
                {
                    "uid": {"type": "Agent", "id": request.agent},
                    "attrs": dict(request.agent_attrs, tenant=request.tenant),
                    "parents": [{"type": "Role", "id": r} for r in request.roles],
                },
                *({"uid": {"type": "Role", "id": r}, "attrs": {}, "parents": []} for r in request.roles),
            ]
            handle = cedarpy.Entities.from_json_str(json.dumps(entities))
            self._principals[key] = handle
        return handle

    def _with_resource(self, request: Request) -> Any:
        """The agent's entities plus the resource's, kept for the most recent resources: the
        steps of a run tend to work on the same target. (Parsed entities, never decisions.)"""
        key = (*_principal_key(request), request.resource, *sorted(request.resource_attrs.items()))
        handle = self._entities.get(key)
        if handle is not None:
            self._entities.move_to_end(key)
            return handle
        resource = {
            "uid": {"type": "Resource", "id": request.resource},
            "attrs": dict(request.resource_attrs),
            "parents": [],
        }
        handle = self._principal(request).with_added_json_str(json.dumps([resource]))
        self._entities[key] = handle
        if len(self._entities) > _RECENT_RESOURCES:
            self._entities.popitem(last=False)
        return handle

    def evaluate(self, request: Request) -> Verdict:
        with _TRACER.start_as_current_span("cedar is_authorized") as span:
            span.set_attributes({"cedar.action": request.tool, "cedar.resource": request.resource})
            verdict = self._evaluate(request)
            span.set_attributes(
                {"cedar.allowed": verdict.allowed, "cedar.determining_policies": list(verdict.policy_ids)}
            )
            return verdict

    def _evaluate(self, request: Request) -> Verdict:
        entities = self._with_resource(request)
        result = cedarpy.is_authorized(
            {
                "principal": {"type": "Agent", "id": request.agent},
                "action": {"type": "Action", "id": request.tool},
                "resource": {"type": "Resource", "id": request.resource},
                "context": json.dumps(to_cedar({**request.context, "tenant": request.tenant})),
            },
            self._for_tool(request.tool),
            entities,
        )
        diagnostics = result.diagnostics
        # Cedar reports the determining policies as a set, in no stable order: sorted, the same
        # request gives the same decision, byte for byte, in every process (replay-decisions
        # found two recorded in the other order).
        return Verdict(result.allowed, tuple(sorted(diagnostics.reasons)), tuple(diagnostics.errors))


def _principal_key(request: Request) -> tuple[Any, ...]:
    # The tenant is an attribute of the principal: a key without it would let one tenant's
    # request be decided with the agent entity parsed for another's.
    return (request.tenant, request.agent, request.roles, *sorted(request.agent_attrs.items()))


def _may_apply(scope: dict[str, Any], tool: str) -> bool:
    """Whether a policy's action scope can match `tool` (Charter defines no action groups, so
    `action in Action::"x"` matches x alone)."""
    op = scope.get("op")
    if op == "==" or (op == "in" and "entity" in scope):
        return bool(scope["entity"]["id"] == tool)
    if op == "in" and "entities" in scope:
        return any(e["id"] == tool for e in scope["entities"])
    return True


def _merge(texts: Sequence[tuple[str, str]]) -> tuple[dict[str, PolicyInfo], dict[str, Any]]:
    """Every file's policies in one set, each under the id decisions will report."""
    infos: dict[str, PolicyInfo] = {}
    static: dict[str, Any] = {}
    for name, text in texts:
        for n, policy in enumerate(parse_file(name, text)):
            annotations = policy.get("annotations", {})
            policy_id = annotations.get("id") or f"{name}#{n}"
            if policy_id in infos:
                raise ValueError(f"{name}: policy id {policy_id!r} is used twice")
            roles = tuple(r.strip() for r in annotations.get("approval", "").split(",") if r.strip())
            if roles and policy["effect"] != "permit":
                raise ValueError(f"{name}: @approval on {policy_id!r} only makes sense on a permit")
            quorum = _quorum(name, policy_id, annotations.get("quorum"), roles)
            expires = _expires(name, policy_id, annotations.get("expires"), roles)
            infos[policy_id] = PolicyInfo(
                policy_id, name, policy["effect"], roles, annotations.get("reason"), quorum, expires
            )
            static[policy_id] = policy
    return infos, {"staticPolicies": static, "templates": {}, "templateLinks": []}


def _quorum(name: str, policy_id: str, value: str | None, roles: tuple[str, ...]) -> int:
    if value is None:
        return 1
    if not roles:
        raise ValueError(f"{name}: @quorum on {policy_id!r} needs @approval beside it")
    if not value.strip().isdigit() or not 1 <= int(value) <= 20:
        raise ValueError(
            f"{name}: @quorum on {policy_id!r} must be a whole number from 1 to 20, not {value!r}"
        )
    return int(value)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _expires(name: str, policy_id: str, value: str | None, roles: tuple[str, ...]) -> float | None:
    if value is None:
        return None
    if not roles:
        raise ValueError(f"{name}: @expires on {policy_id!r} needs @approval beside it")
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", value)
    if match is None or int(match[1]) == 0:
        raise ValueError(
            f"{name}: @expires on {policy_id!r} takes a duration such as 90s, 30m, 4h or 2d, not {value!r}"
        )
    return float(int(match[1]) * _UNITS[match[2]])


def parse_file(name: str, text: str) -> list[dict[str, Any]]:
    """One file's policies in Cedar's JSON form, in the order written."""
    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    if est.get("templates"):
        raise ValueError(f"{name}: policy templates are not supported")
    ordered = sorted(est["staticPolicies"].items(), key=lambda kv: int(kv[0].removeprefix("policy")))
    return [policy for _, policy in ordered]


def to_cedar(value: Any) -> Any:
    """A JSON value as Cedar sees it: floats become `decimal`, nulls disappear.

    Cedar has no floats and no null; a value Cedar cannot hold raises ValueError, which the
    caller turns into a denial (fail closed), never into a silently different value.
    """
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not -_I64 <= value < _I64:
            raise ValueError(f"integer {value} is out of Cedar's range")
        return value
    if isinstance(value, float):
        exact = Decimal(repr(value))
        if exact != exact.quantize(Decimal("0.0001")):
            raise ValueError(f"number {value} has more than 4 decimal places")
        return {"__extn": {"fn": "decimal", "arg": f"{exact:.4f}"}}
    if isinstance(value, dict):
        return {k: to_cedar(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [to_cedar(v) for v in value if v is not None]
    raise ValueError(f"{type(value).__name__} cannot be a Cedar value")
