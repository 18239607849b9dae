"""Agents, declared in YAML: who owns them, what starts them, which tools they hold, and how
they plan: a playbook of steps (`plan: playbook`, the default), or a model that chooses among
the agent's tools (`plan: llm`). Loaded and checked at start; a bad file stops the service with
its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from charter.errors import ConfigError
from charter.limits import AgentLimits
from charter.templating import TemplateFailure, check
from charter.tools import ToolSpec

_ID = r"^[a-z0-9][a-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TriggerRule(_Strict):
    event: str = Field(description="The business event name that starts a run.")
    when: str | None = Field(None, description="Optional Jinja expression over `trigger`.")


class Compensation(_Strict):
    """The action that undoes a step, templated over the step's `params` and `result` too."""

    tool: str
    resource: str | None = Field(None, description="Templated target; defaults to the step's.")
    parameters: dict[str, Any] = Field(default_factory=dict)


class Handoff(_Strict):
    """Hand the work to another agent: a run of its own, with the same correlation id."""

    agent: str = Field(pattern=_ID)
    context: dict[str, Any] | None = Field(
        None,
        description="Templated data the new run starts with (its `trigger`); unset: this run's "
        "trigger data and step results.",
    )


class Wait(_Strict):
    """Wait for a business event that carries the run's key, for at most `timeout_s`."""

    event: str = Field(description="The awaited business event's name.")
    field: str = Field(description="The awaited event's data field that must equal `key`.")
    key: str = Field(description="Templated over the run, e.g. '{{ trigger.order_id }}'.")
    timeout_s: float = Field(gt=0)
    on_timeout: Literal["fail", "escalate", "continue"] = "fail"


class Step(_Strict):
    """One step of a playbook: a tool call (`tool`), a handoff, or a wait."""

    id: str = Field(pattern=_ID)
    tool: str | None = None
    handoff: Handoff | None = None
    wait: Wait | None = None
    resource: str | None = Field(None, description="Templated target; defaults to the tool name.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    compensate: Compensation | None = Field(
        None, description="How to undo the step; defaults to its tool's declared compensation."
    )
    when: str | None = Field(
        None, description="Jinja expression over the run (trigger, steps); false skips the step."
    )
    expect: str | None = Field(
        None,
        description="Jinja expression over the step's `result` (and the run) that must hold: a "
        "verification step. False fails the run, which undoes what it did.",
    )


class ModelPlan(_Strict):
    """How a `plan: llm` agent reasons: its instructions, and the bounds on the loop."""

    instructions: str = Field(min_length=1, description="The system prompt.")
    model: str | None = Field(None, description="Overrides CHARTER_LLM_MODEL for this agent.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_turns: int = Field(10, ge=1, le=200, description="Model calls one run may make.")
    max_errors: int = Field(
        3, ge=0, le=50, description="Malformed, failed or denied tool calls answered before escalating."
    )
    resources: dict[str, str] = Field(
        default_factory=dict,
        description="Per tool, the templated target of a call, over `params` and `trigger`; "
        "defaults to the tool name.",
    )


class Agent(_Strict):
    id: str = Field(pattern=_ID)
    owner: str
    description: str
    environment: str = Field(pattern=_ID)
    roles: list[str] = Field(default_factory=list)
    triggers: list[TriggerRule] = Field(
        default_factory=list, description="What starts a run; none: only a handoff does."
    )
    tools: list[str] = Field(min_length=1)
    plan: Literal["playbook", "llm"] = "playbook"
    handoffs: list[str] = Field(default_factory=list, description="Agents this one may hand work to.")
    steps: list[Step] = Field(default_factory=list)
    llm: ModelPlan | None = None
    limits: AgentLimits = AgentLimits()

    @property
    def reasons(self) -> bool:
        """A model plans this agent's runs."""
        return self.plan == "llm"

    @model_validator(mode="after")
    def _consistent(self) -> Agent:
        if self.plan == "llm":
            if self.llm is None or self.steps:
                raise ValueError("a `plan: llm` agent needs an `llm:` section and no steps")
            for name, resource in self.llm.resources.items():
                if name not in self.tools:
                    raise ValueError(f"llm.resources names {name!r}, which the agent does not hold")
                check(resource)
        elif self.llm is not None or not self.steps:
            raise ValueError("a playbook agent needs steps, and no `llm:` section")
        ids = [s.id for s in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError("step ids must be unique")
        for step in self.steps:
            self._check_step(step)
        for rule in self.triggers:
            if rule.when is not None:
                check("{{ " + rule.when + " }}")
        return self

    def _check_step(self, step: Step) -> None:
        kinds = [k for k in ("tool", "handoff", "wait") if getattr(step, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"step {step.id!r} needs exactly one of tool, handoff and wait")
        for expression in (step.when, step.expect):
            if expression is not None:
                check("{{ " + expression + " }}")
        if step.tool is None:
            self._check_coordination(step)
            return
        if step.tool not in self.tools:
            raise ValueError(f"step {step.id!r} uses tool {step.tool!r}, which the agent does not hold")
        check(step.parameters)
        check(step.resource)
        if step.compensate is not None:
            if step.compensate.tool not in self.tools:
                undo = step.compensate.tool
                raise ValueError(f"step {step.id!r} is undone by {undo!r}, which the agent does not hold")
            check(step.compensate.parameters)
            check(step.compensate.resource)

    def _check_coordination(self, step: Step) -> None:
        """A handoff or a wait: no parameters, resource or compensation of its own."""
        if step.compensate is not None or step.resource is not None or step.parameters:
            raise ValueError(f"step {step.id!r}: only a tool step has parameters, a resource or compensate")
        if step.handoff is not None:
            if step.handoff.agent not in self.handoffs:
                raise ValueError(f"step {step.id!r} hands off to {step.handoff.agent!r}, not in `handoffs`")
            check(step.handoff.context)
        if step.wait is not None:
            check(step.wait.key)


def _error_line(exc: ValidationError | TemplateFailure | yaml.YAMLError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "agent"
        return f"{where}: {first['msg']}"
    return " ".join(str(exc).split())


def load_file(path: Path) -> Agent:
    try:
        raw = yaml.safe_load(path.read_text())
        return Agent.model_validate(raw)
    except (ValidationError, TemplateFailure, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {_error_line(exc)}") from exc


def _default_compensation(tool: ToolSpec, known_tools: Mapping[str, ToolSpec]) -> Compensation | None:
    """The tool's declared undo, its parameters taken by name from the step's result, else its
    parameters: `cancel_refund(refund_id)` after `issue_refund` gets the refund's id."""
    if tool.compensation is None:
        return None
    # Required fields only: an optional one the step does not have keeps its default.
    fields = [n for n, f in known_tools[tool.compensation].params.model_fields.items() if f.is_required()]
    return Compensation(
        tool=tool.compensation,
        parameters={f: f"{{{{ result['{f}'] if '{f}' in result else params['{f}'] }}}}" for f in fields},
    )


def with_compensations(agent: Agent, known_tools: Mapping[str, ToolSpec]) -> Agent:
    steps = [
        step
        if step.compensate is not None or step.tool is None or step.tool not in known_tools
        else step.model_copy(
            update={"compensate": _default_compensation(known_tools[step.tool], known_tools)}
        )
        for step in agent.steps
    ]
    # Validated again: the agent must hold every tool that undoes one of its steps.
    return Agent.model_validate({**agent.model_dump(), "steps": [s.model_dump() for s in steps]})


def load(directory: Path, known_tools: Mapping[str, ToolSpec] | None = None) -> dict[str, Agent]:
    """Every `*.yaml` agent in `directory`, checked against the tool registry if given, which
    also supplies each step's compensation unless the step names its own."""
    if not directory.is_dir():
        raise ConfigError(f"agents directory {directory} does not exist")
    agents: dict[str, Agent] = {}
    for path in sorted(directory.glob("*.y*ml")):
        agent = load_file(path)
        if agent.id in agents:
            raise ConfigError(f"{path}: agent id {agent.id!r} is declared twice")
        if known_tools is not None:
            unknown = [t for t in agent.tools if t not in known_tools]
            if unknown:
                raise ConfigError(f"{path}: unknown tool(s) {', '.join(unknown)}")
            try:
                agent = with_compensations(agent, known_tools)
            except ValidationError as exc:
                raise ConfigError(f"{path}: {_error_line(exc)}") from exc
        agents[agent.id] = agent
    for agent in agents.values():
        strangers = [a for a in agent.handoffs if a not in agents]
        if strangers:
            raise ConfigError(f"agent {agent.id}: hands off to unknown agent(s) {', '.join(strangers)}")
    return agents
