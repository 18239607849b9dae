"""A Cedar policy set, loaded from a directory of `*.cedar` files and parsed once.

Policies are named by their `@id("...")` annotation, or `file.cedar#N` without one, and those
names are what decisions report. `@approval("role")` on a permit means the action may run only
once a human holding that role approves it (several roles: `@approval("finance,it-security")`).
`@reason("...")` gives the sentence a decision shows for that policy.
A directory that does not load yields a set that denies everything, with the error as reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import cedarpy

_I64 = 2**63


@dataclass(frozen=True)
class PolicyInfo:
    id: str
    file: str
    effect: str
    approval_roles: tuple[str, ...]
    reason: str | None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy_ids: tuple[str, ...]
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    agent: str
    roles: tuple[str, ...]
    agent_attrs: Mapping[str, Any]
    tool: str
    resource: str
    context: Mapping[str, Any]


class PolicySet:
    def __init__(
        self,
        digest: str,
        files: tuple[str, ...],
        infos: Mapping[str, PolicyInfo],
        cedar: Any,
        error: str | None = None,
    ) -> None:
        self.hash = digest
        self.files = files
        self.infos = dict(infos)
        self._cedar = cedar
        self.error = error

    @classmethod
    def load(cls, directory: Path) -> PolicySet:
        paths = sorted(directory.glob("*.cedar")) if directory.is_dir() else []
        texts = [(p.name, p.read_text()) for p in paths]
        digest = hashlib.sha256()
        for name, text in texts:
            digest.update(name.encode() + b"\0" + text.encode() + b"\0")
        files = tuple(name for name, _ in texts)
        if not texts:
            return cls(digest.hexdigest(), files, {}, None, f"no *.cedar files in {directory}")
        try:
            infos, merged = _merge(texts)
            cedar = cedarpy.PolicySet.from_json_str(json.dumps(merged))
        except ValueError as exc:
            return cls(digest.hexdigest(), files, {}, None, " ".join(str(exc).split()))
        return cls(digest.hexdigest(), files, infos, cedar)

    def evaluate(self, request: Request) -> Verdict:
        if self._cedar is None:
            return Verdict(False, (), (self.error or "no policy set",))
        entities: list[dict[str, Any]] = [
            {
                "uid": {"type": "Agent", "id": request.agent},
                "attrs": dict(request.agent_attrs),
                "parents": [{"type": "Role", "id": r} for r in request.roles],
            },
            *({"uid": {"type": "Role", "id": r}, "attrs": {}, "parents": []} for r in request.roles),
            {"uid": {"type": "Resource", "id": request.resource}, "attrs": {}, "parents": []},
        ]
        result = cedarpy.is_authorized(
            {
                "principal": {"type": "Agent", "id": request.agent},
                "action": {"type": "Action", "id": request.tool},
                "resource": {"type": "Resource", "id": request.resource},
                "context": to_cedar(dict(request.context)),
            },
            self._cedar,
            entities,
        )
        diagnostics = result.diagnostics
        return Verdict(result.allowed, tuple(diagnostics.reasons), tuple(diagnostics.errors))


def _merge(texts: list[tuple[str, str]]) -> tuple[dict[str, PolicyInfo], dict[str, Any]]:
    """Every file's policies in one set, each under the id decisions will report."""
    infos: dict[str, PolicyInfo] = {}
    static: dict[str, Any] = {}
    for name, text in texts:
        try:
            est = json.loads(cedarpy.policies_to_json_str(text))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        if est.get("templates"):
            raise ValueError(f"{name}: policy templates are not supported")
        ordered = sorted(est["staticPolicies"].items(), key=lambda kv: int(kv[0].removeprefix("policy")))
        for n, (_, policy) in enumerate(ordered):
            annotations = policy.get("annotations", {})
            policy_id = annotations.get("id") or f"{name}#{n}"
            if policy_id in infos:
                raise ValueError(f"{name}: policy id {policy_id!r} is used twice")
            roles = tuple(r.strip() for r in annotations.get("approval", "").split(",") if r.strip())
            if roles and policy["effect"] != "permit":
                raise ValueError(f"{name}: @approval on {policy_id!r} only makes sense on a permit")
            infos[policy_id] = PolicyInfo(policy_id, name, policy["effect"], roles, annotations.get("reason"))
            static[policy_id] = policy
    return infos, {"staticPolicies": static, "templates": {}, "templateLinks": []}


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
