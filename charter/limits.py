"""Live limits, as agent builders and the security team write them.

An agent's file may set its own (`limits:`); `limits.yaml` in the policy directory may set
limits per agent, defaults for every agent, and limits per tool. Where both set one, the
stricter wins: an agent builder can tighten what security allows, never loosen it.
Costs are in the cost units each tool declares; model tokens and cost are what the planner
reports on each proposal.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rate(_Strict):
    count: int = Field(ge=1, description="At most this many actions...")
    per_seconds: float = Field(gt=0, description="...in any window of this many seconds.")


class AgentLimits(_Strict):
    budget_per_run: int | None = Field(None, ge=0, description="Cost units one run may spend.")
    budget_per_day: int | None = Field(None, ge=0, description="Cost units the agent may spend per UTC day.")
    tokens_per_run: int | None = Field(None, ge=0)
    tokens_per_day: int | None = Field(None, ge=0)
    llm_cost_per_run: float | None = Field(None, ge=0)
    llm_cost_per_day: float | None = Field(None, ge=0)
    max_steps: int | None = Field(None, ge=1, description="Actions one run may propose.")
    rate: Rate | None = None
    loop_threshold: int | None = Field(
        None, ge=2, description="The same tool and parameters proposed this often in one run is a loop."
    )
    max_handoff_depth: int | None = Field(
        None, ge=0, description="How long a chain of handoffs from a business event may grow."
    )


class ToolLimits(_Strict):
    rate: Rate | None = None
    budget_per_day: int | None = Field(
        None, ge=0, description="Cost units all agents may spend on this tool per day."
    )


class LimitsFile(_Strict):
    """`limits.yaml` in the policy directory."""

    defaults: AgentLimits = AgentLimits()
    agents: dict[str, AgentLimits] = Field(default_factory=dict)
    tools: dict[str, ToolLimits] = Field(default_factory=dict)


DEFAULT_LOOP_THRESHOLD = 3
DEFAULT_MAX_HANDOFF_DEPTH = 3


def _stricter(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Rate) and isinstance(b, Rate):
        # The tighter of two rates: the one that allows fewer actions per second.
        return a if a.count / a.per_seconds <= b.count / b.per_seconds else b
    return min(a, b)


def combine(*sources: AgentLimits) -> AgentLimits:
    """The limits in force: for each, the strictest any source sets."""
    merged: dict[str, Any] = {}
    for name in AgentLimits.model_fields:
        value = None
        for source in sources:
            value = _stricter(value, getattr(source, name))
        merged[name] = value
    return AgentLimits.model_validate(merged)
