"""The Agent Governance Toolkit's side of bench/policy.py, run by the bench in the toolkit's own
environment (bench/.venv-agt, `agent-governance-toolkit-core` from PyPI): the same rules as
Charter's bench policies, in the toolkit's declarative PolicyEngine, evaluated in-process.

Prints one JSON object: outcomes for the bench's actions, and timings for each rule count.
Reads the actions and settings as JSON on stdin.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from typing import Any

with warnings.catch_warnings():
    # Importing agentmesh warns that "agentmesh-platform" is deprecated, even from the core package.
    warnings.simplefilter("ignore", DeprecationWarning)
    from agentmesh.governance.policy import Policy, PolicyEngine, PolicyRule

# The rules of bench/policy.py's Cedar set, in the toolkit's condition language. Roles become
# flags (agent.roles.<role>), since a condition cannot test list membership.
CORE = [
    {"name": "refund-over-limit", "priority": 100, "action": "deny",
     "condition": "tool_name == 'issue_refund' and params.amount > 5000"},
    {"name": "no-production-admin", "priority": 100, "action": "deny",
     "condition": "tool_name == 'grant_access' and params.level == 'admin' and params.target_environment == 'production'"},
    {"name": "refund-large", "priority": 50, "action": "require_approval", "approvers": ["finance"],
     "condition": "tool_name == 'issue_refund' and agent.roles.support and params.amount > 100 and params.amount <= 5000"},
    {"name": "refund-small", "priority": 10, "action": "allow",
     "condition": "tool_name == 'issue_refund' and agent.roles.support and params.amount <= 100"},
    {"name": "support-tools", "priority": 10, "action": "allow",
     "condition": "tool_name in ['lookup_order', 'notify_customer'] and agent.roles.support"},
    {"name": "it-read-access", "priority": 10, "action": "allow",
     "condition": "tool_name == 'grant_access' and agent.roles.it and params.level == 'read'"},
]  # fmt: skip
OUTCOME = {"allow": "allow", "deny": "deny", "require_approval": "approval", "warn": "allow", "log": "allow"}


def build(rules: int) -> PolicyEngine:
    fillers = [
        {"name": f"filler-{i:03d}", "priority": 1, "action": "allow", "condition": f"tool_name == 'tool_{i:03d}' and agent.roles.role_{i:03d}"}
        for i in range(rules - len(CORE))
    ]  # fmt: skip
    policy = Policy(
        name=f"bench-{rules}",
        agents=["*"],
        default_action="deny",
        rules=[PolicyRule(stage="pre_tool", **spec) for spec in CORE + fillers],
    )
    engine = PolicyEngine(conflict_strategy="priority_first_match")
    engine.load_policy(policy)
    return engine


def context(action: dict[str, Any]) -> dict[str, Any]:
    return {
        "tool_name": action["tool"],
        "resource": action["resource"],
        "environment": action["environment"],
        "agent": {"id": action["agent"], "roles": dict.fromkeys(action["roles"], True)},
        "params": action["parameters"],
    }


def evaluate(engine: PolicyEngine, action: dict[str, Any]) -> str:
    return OUTCOME[engine.evaluate("*", context(action), stage="pre_tool").action]


def main() -> None:
    job = json.load(sys.stdin)
    actions, calls, warmup = job["actions"], job["calls"], job["warmup"]
    result: dict[str, Any] = {"timings": {}}
    for rules in job["rules"]:
        engine = build(rules)
        result.setdefault("outcomes", [evaluate(engine, a) for a in actions])
        for i in range(warmup):
            evaluate(engine, actions[i % len(actions)])
        samples = []
        for i in range(calls):
            started = time.perf_counter_ns()
            evaluate(engine, actions[i % len(actions)])
            samples.append(time.perf_counter_ns() - started)
        samples.sort()
        result["timings"][str(rules)] = {
            "p50_us": samples[len(samples) // 2] / 1000,
            "p99_us": samples[int(len(samples) * 0.99)] / 1000,
            "per_s": 1e9 / statistics.fmean(samples),
        }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
