"""Live limits, decided without I/O over a snapshot of usage the service loads for each batch.

Every proposal counts toward its run's steps and toward its loop signature (the same tool with
the same parameters), whether it is allowed or not: a planner stuck in a loop is stopped even if
each attempt is denied. Budgets and rates are charged only when policy admits the action (it
is allowed, or waits for a human), and an action that would exceed one is denied without
being charged. A breach names the limit, so the denial can say which one was hit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from charter.events import ActionProposed, canonical_json
from charter.limits import DEFAULT_LOOP_THRESHOLD, AgentLimits, Rate, ToolLimits

# (kind, key, window), e.g. ("cost", run_id, "run"), ("cost", agent, "2026-11-22"), ("loop", run, signature)
CounterKey = tuple[str, str, str]
# (scope, key): ("agent", agent_id) or ("tool", tool_name); values are epoch seconds.
WindowKey = tuple[str, str]
RATE_HISTORY_S = 86_400.0


@dataclass
class Usage:
    counters: dict[CounterKey, float] = field(default_factory=dict)
    calls: dict[WindowKey, list[float]] = field(default_factory=dict)
    # What changed, for the store to write back.
    touched: set[CounterKey] = field(default_factory=set)
    new_calls: list[tuple[str, str, float]] = field(default_factory=list)

    def get(self, key: CounterKey) -> float:
        return self.counters.get(key, 0.0)

    def add(self, key: CounterKey, amount: float) -> float:
        self.counters[key] = self.get(key) + amount
        self.touched.add(key)
        return self.counters[key]


@dataclass(frozen=True)
class Breach:
    limit: str
    reason: str


def day(now: datetime) -> str:
    return now.strftime("%Y-%m-%d")


def signature(proposed: ActionProposed) -> str:
    action = proposed.action
    return hashlib.sha256(f"{action.tool}\0{canonical_json(action.parameters)}".encode()).hexdigest()[:32]


def keys_for(proposed: ActionProposed, now: datetime) -> tuple[list[CounterKey], list[WindowKey]]:
    """The counters and windows deciding this proposal may read or write."""
    run = proposed.envelope.run_id or ""
    agent = proposed.envelope.agent or ""
    tool = proposed.action.tool
    today = day(now)
    counters = [(kind, run, "run") for kind in ("cost", "tokens", "llm_cost", "steps")]
    counters += [(kind, agent, today) for kind in ("cost", "tokens", "llm_cost")]
    counters += [("tool_cost", tool, today), ("loop", run, signature(proposed))]
    return counters, [("agent", agent), ("tool", tool)]


def count_proposal(proposed: ActionProposed, limits: AgentLimits, usage: Usage) -> Breach | None:
    """Count the proposal against its run; a breach if it is one step or one repeat too many."""
    run = proposed.envelope.run_id or ""
    steps = usage.add(("steps", run, "run"), 1)
    repeats = usage.add(("loop", run, signature(proposed)), 1)
    threshold = limits.loop_threshold or DEFAULT_LOOP_THRESHOLD
    if repeats >= threshold:
        tool = proposed.action.tool
        return Breach(
            "loop",
            f"loop: {tool} with the same parameters {int(repeats)} times in this run (a loop at {threshold})",
        )
    if limits.max_steps is not None and steps > limits.max_steps:
        return Breach(
            "max_steps", f"max_steps: this run has proposed {int(steps)} actions (limit {limits.max_steps})"
        )
    return None


def admit(
    proposed: ActionProposed,
    limits: AgentLimits,
    tool_limits: ToolLimits | None,
    cost_units: int,
    *,
    usage: Usage,
    now: datetime,
) -> Breach | None:
    """Charge an action policy admitted, unless that would exceed a budget or a rate."""
    run = proposed.envelope.run_id or ""
    agent = proposed.envelope.agent or ""
    tool = proposed.action.tool
    today = day(now)
    charges: Mapping[CounterKey, tuple[float, float | None, str]] = {
        ("cost", run, "run"): (cost_units, limits.budget_per_run, "budget_per_run"),
        ("cost", agent, today): (cost_units, limits.budget_per_day, "budget_per_day"),
        ("tokens", run, "run"): (proposed.llm_tokens, limits.tokens_per_run, "tokens_per_run"),
        ("tokens", agent, today): (proposed.llm_tokens, limits.tokens_per_day, "tokens_per_day"),
        ("llm_cost", run, "run"): (proposed.llm_cost, limits.llm_cost_per_run, "llm_cost_per_run"),
        ("llm_cost", agent, today): (proposed.llm_cost, limits.llm_cost_per_day, "llm_cost_per_day"),
        ("tool_cost", tool, today): (
            cost_units,
            tool_limits.budget_per_day if tool_limits else None,
            "tool_budget_per_day",
        ),
    }
    for key, (amount, cap, name) in charges.items():
        if cap is not None and usage.get(key) + amount > cap:
            return Breach(name, f"{name}: {usage.get(key):g} spent + {amount:g} would exceed {cap:g}")
    at = now.timestamp()
    rates = [
        (("agent", agent), limits.rate, "rate_agent"),
        (("tool", tool), tool_limits.rate if tool_limits else None, "rate_tool"),
    ]
    for window, rate, name in rates:
        if rate is not None and _recent(usage, window, rate, at) >= rate.count:
            return Breach(name, f"{name}: {rate.count} actions in {rate.per_seconds:g}s already")
    for key, (amount, _, _) in charges.items():
        if amount:
            usage.add(key, amount)
    for window, _, _ in rates:
        usage.calls.setdefault(window, []).append(at)
        usage.new_calls.append((*window, at))
    return None


def _recent(usage: Usage, window: WindowKey, rate: Rate, at: float) -> int:
    since = at - rate.per_seconds
    return sum(1 for t in usage.calls.get(window, ()) if t > since)
