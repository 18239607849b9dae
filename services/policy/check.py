"""`charter policy check` and `charter policy test`: what a security team runs before rollout.

`check` loads the policy bundle and validates every Cedar file, each tenant's own included,
against the schema generated from the agent and tool registry, naming file and line for an
unknown tool, an unknown attribute or a type error. `test` runs policy unit cases: a request,
and the decision expected of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import cedarpy
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.agents import Agent
from charter.clock import derive_id
from charter.errors import ConfigError
from charter.events import Action, ActionProposed, Decision, Event
from charter.tools import Registry
from services.policy.bundle import LIMITS, RESOURCES, TENANTS, PolicyBundle
from services.policy.decide import Context, decide
from services.policy.limits import Usage
from services.policy.schema import cedar_schema


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    policy: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.policy}: {self.message}"


_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|;|\S')


def policy_lines(text: str) -> list[int]:
    """The line each policy of a Cedar file starts on, in order (comments and strings skipped)."""
    starts: list[int] = []
    start: int | None = None
    for token in _TOKEN.finditer(text):
        if token.group().startswith("//"):
            continue
        if start is None:
            start = text.count("\n", 0, token.start()) + 1
        if token.group() == ";":
            starts.append(start)
            start = None
    return starts


def check(directory: Path, agents: dict[str, Agent], tools: Registry) -> tuple[PolicyBundle, list[Problem]]:
    bundle = PolicyBundle.load(directory)
    if bundle.error:
        return bundle, [Problem(directory.name, 0, "-", bundle.error)]
    schema = cedar_schema(tools.values(), bundle.resources)
    problems = _validate(directory, schema)
    problems += _limit_problems(bundle, agents, tools, directory / LIMITS)
    for tenant, own in sorted(bundle.tenants.items()):
        problems += _tenant_problems(directory / TENANTS / tenant, own, agents, tools, schema)
    problems += [
        Problem(str(path), 0, "-", "not read: every tenant has the base directory's resource catalog")
        for path in sorted(directory.glob(f"{TENANTS}/*/{RESOURCES}"))
    ]
    return bundle, problems


def _validate(directory: Path, schema: dict[str, Any]) -> list[Problem]:
    """Every `*.cedar` file of `directory` against the schema."""
    problems: list[Problem] = []
    for path in sorted(directory.glob("*.cedar")):
        text = path.read_text()
        lines = policy_lines(text)
        result = cedarpy.validate_policies(text, schema)
        names = result.id_annotations_by_policy_id
        for error in result.errors:
            index = (
                int(error.policy_id.removeprefix("policy")) if error.policy_id.startswith("policy") else -1
            )
            line = lines[index] if 0 <= index < len(lines) else 0
            name = names.get(error.policy_id) or f"{path.name}#{index}"
            problems.append(Problem(str(path), line, name, " ".join(error.error.split())))
    return problems


def _tenant_problems(
    where: Path, own: PolicyBundle, agents: dict[str, Agent], tools: Registry, schema: dict[str, Any]
) -> list[Problem]:
    """A tenant's own files, checked as the base's are; a set that does not load, as a whole."""
    if own.error:
        return [Problem(str(where), 0, "-", own.error)]
    problems = _validate(where, schema)
    if own.limits_scope is not None:
        problems += _limit_problems(own, agents, tools, where / LIMITS)
    return problems


def _limit_problems(
    bundle: PolicyBundle, agents: dict[str, Agent], tools: Registry, limits: Path
) -> list[Problem]:
    found = [
        Problem(str(limits), 0, "agents", f"unknown agent {a!r}")
        for a in bundle.limits.agents
        if a not in agents
    ]
    found += [
        Problem(str(limits), 0, "tools", f"unknown tool {t!r}") for t in bundle.limits.tools if t not in tools
    ]
    return found


class Case(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    agent: str
    tool: str
    resource: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    environment: str | None = None
    compensates: str | None = Field(None, description="The step id the action undoes, for a compensation.")
    tenant: str = Field("policy-test", description="The tenant proposing: its own policies apply.")
    expect: Literal["allow", "deny", "approval"]
    policies: list[str] | None = None
    roles: list[str] | None = None
    reason: str | None = Field(None, description="A fragment the first reason must contain.")


class Cases(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class Outcome:
    case: Case
    decision: Decision
    failures: list[str]


def load_cases(path: Path) -> Cases:
    try:
        return Cases.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"no cases file {path}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: {' '.join(str(exc).split())[:300]}") from exc


def run_case(case: Case, ctx: Context, now: datetime | None = None) -> Outcome:
    now = now or datetime.now(UTC)
    agent = ctx.agents.get(case.agent)
    environment = case.environment or (agent.environment if agent else "")
    run = derive_id("policy-test", case.name)
    action = Action(
        action_id=derive_id(run, "action"),
        step_index=0,
        step_id="case",
        tool=case.tool,
        resource=case.resource,
        parameters=case.parameters,
        environment=environment,
        compensates=case.compensates,
    )
    proposed = ActionProposed.create(
        event_id=derive_id(run, "proposed"), now=now, tenant=case.tenant, agent=case.agent, run_id=run,
        correlation_id=run, action=action,
    )  # fmt: skip
    [out] = decide(proposed, ctx, Usage(), now)
    decision = _decision_of(out)
    failures = []
    if decision.outcome != case.expect:
        failures.append(f"expected {case.expect}, got {decision.outcome}")
    if case.policies is not None and sorted(decision.policy_ids) != sorted(case.policies):
        failures.append(f"expected policies {case.policies}, got {decision.policy_ids}")
    if case.roles is not None and sorted(decision.approval_roles) != sorted(case.roles):
        failures.append(f"expected approval by {case.roles}, got {decision.approval_roles}")
    if case.reason is not None and not any(case.reason in r for r in decision.reasons):
        failures.append(f"no reason mentions {case.reason!r}")
    return Outcome(case, decision, failures)


def _decision_of(event: Event) -> Decision:
    decision = getattr(event, "decision", None)
    if not isinstance(decision, Decision):
        raise TypeError(f"policy answered with a {type(event).__name__}")
    return decision
