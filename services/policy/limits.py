"""Live limits, decided without I/O over a snapshot of usage the service loads for each batch.

Every proposal counts toward its run's steps and toward its loop signature (the same tool with
the same parameters), whether it is allowed or not: a planner stuck in a loop is stopped even if
each attempt is denied. Budgets and rates are charged only when policy admits the action (it
is allowed, or waits for a human), and an action that would exceed one is denied without
being charged. A breach names the limit, so the denial can say which one was hit.

A tenant with its own `limits.yaml` has its own counters for the limits that span runs (an
agent's or a tool's budget per day, rates): its limits bound its own usage, not every
tenant's. The base limits count every other tenant's usage together, as they always have.

Rates are sliding windows, estimated from two fixed windows (the current one, and the previous
one weighted by how much of it the sliding window still covers), as production rate limiters
do: two counters per scope, whatever the traffic, so replicas can share them cheaply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from charter.events import ActionProposed, canonical_json
from charter.limits import DEFAULT_LOOP_THRESHOLD, AgentLimits, Rate, ToolLimits

# (kind, key, window), e.g. ("cost", run_id, "run"), ("cost", agent, "2026-11-22"), ("loop", run, signature),
# ("rate", "agent:support-refunds", "000029515800"): a rate's fixed window by its index.
CounterKey = tuple[str, str, str]


@dataclass
class Usage:
    counters: dict[CounterKey, float] = field(default_factory=dict)
    # What changed, for the store to write back.
    touched: set[CounterKey] = field(default_factory=set)

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


@dataclass(frozen=True)
class Limits:
    """What binds one proposal: its agent's limits, and its tool's."""

    agent: AgentLimits
    tool: ToolLimits | None
    cost_units: int
    # The tenant whose own limits these are, and whose usage alone they count; None: the base's.
    scope: str | None = None

    def counter(self, key: str) -> str:
        """The counter key of an agent or a tool under these limits."""
        return f"tenant:{self.scope}/{key}" if self.scope is not None else key


def day(now: datetime) -> str:
    return now.strftime("%Y-%m-%d")


def signature(proposed: ActionProposed) -> str:
    action = proposed.action
    return hashlib.sha256(f"{action.tool}\0{canonical_json(action.parameters)}".encode()).hexdigest()[:32]


def _window(rate: Rate, at: float) -> tuple[str, str, float]:
    """The current and previous fixed windows' names, and how far into the current one `at` is."""
    position = at / rate.per_seconds
    index = int(position)
    return f"{index:012d}", f"{index - 1:012d}", position - index


def _rates(proposed: ActionProposed, limits: Limits) -> list[tuple[str, Rate | None, str]]:
    tool_rate = limits.tool.rate if limits.tool else None
    return [
        (limits.counter(f"agent:{proposed.envelope.agent or ''}"), limits.agent.rate, "rate_agent"),
        (limits.counter(f"tool:{proposed.action.tool}"), tool_rate, "rate_tool"),
    ]


def keys_for(proposed: ActionProposed, limits: Limits, now: datetime) -> list[CounterKey]:
    """The counters deciding this proposal may read or write."""
    run = proposed.envelope.run_id or ""
    agent = limits.counter(proposed.envelope.agent or "")
    today = day(now)
    keys = [(kind, run, "run") for kind in ("cost", "tokens", "llm_cost", "steps")]
    keys += [(kind, agent, today) for kind in ("cost", "tokens", "llm_cost")]
    keys += [("tool_cost", limits.counter(proposed.action.tool), today), ("loop", run, signature(proposed))]
    for scope, rate, _ in _rates(proposed, limits):
        if rate is not None:
            current, previous, _ = _window(rate, now.timestamp())
            keys += [("rate", scope, current), ("rate", scope, previous)]
    return keys


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


def admit(proposed: ActionProposed, limits: Limits, *, usage: Usage, now: datetime) -> Breach | None:
    """Charge an action policy admitted, unless that would exceed a budget or a rate."""
    run = proposed.envelope.run_id or ""
    agent = limits.counter(proposed.envelope.agent or "")
    today = day(now)
    a, cost = limits.agent, limits.cost_units
    tool_cap = limits.tool.budget_per_day if limits.tool else None
    charges: list[tuple[CounterKey, float, float | None, str]] = [
        (("cost", run, "run"), cost, a.budget_per_run, "budget_per_run"),
        (("cost", agent, today), cost, a.budget_per_day, "budget_per_day"),
        (("tokens", run, "run"), proposed.llm_tokens, a.tokens_per_run, "tokens_per_run"),
        (("tokens", agent, today), proposed.llm_tokens, a.tokens_per_day, "tokens_per_day"),
        (("llm_cost", run, "run"), proposed.llm_cost, a.llm_cost_per_run, "llm_cost_per_run"),
        (("llm_cost", agent, today), proposed.llm_cost, a.llm_cost_per_day, "llm_cost_per_day"),
        (("tool_cost", limits.counter(proposed.action.tool), today), cost, tool_cap, "tool_budget_per_day"),
    ]
    for key, amount, cap, name in charges:
        if cap is not None and usage.get(key) + amount > cap:
            return Breach(name, f"{name}: {usage.get(key):g} spent + {amount:g} would exceed {cap:g}")
    at = now.timestamp()
    windows = []
    for scope, rate, name in _rates(proposed, limits):
        if rate is None:
            continue
        current, previous, elapsed = _window(rate, at)
        recent = usage.get(("rate", scope, previous)) * (1 - elapsed) + usage.get(("rate", scope, current))
        if recent + 1 > rate.count:
            return Breach(name, f"{name}: {rate.count} actions in {rate.per_seconds:g}s already")
        windows.append(("rate", scope, current))
    for key, amount, _, _ in charges:
        if amount:
            usage.add(key, amount)
    for key in windows:
        usage.add(key, 1)
    return None
