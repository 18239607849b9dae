"""The policy service's full path for one action, against Microsoft's Agent Governance Toolkit.

    make bench-policy       # makes bench/.venv-agt (agent-governance-toolkit-core from PyPI), runs this
    .venv/bin/python bench/policy.py [--calls 20000] [--agt PYTHON]

For 10 and 100 policies, Charter's path is: Avro decode of an ActionProposed, the decision
(registry and segmentation checks, Cedar, live limits and their accounting), Avro encode of
the outcome, signed (Ed25519) when it is an ActionApproved. The toolkit's is its in-process
PolicyEngine.evaluate on the same rules (bench/agt_runner.py). Both cycle through the same four actions (allow, approval, deny,
allow) and must agree on every outcome. Results: bench/results/policy.json.

Three more figures, for honesty: Charter's decision alone (no Avro, which the toolkit's figure
does not include either); Charter with Cedar given the whole policy set rather than each
tool's subset; and Charter with its store: decisions in batches of 100 with the usage loaded,
written back and every decision recorded, in one serialized SQLite transaction a batch.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from charter import agents, serde, signing, tools
from charter.clock import derive_id
from charter.events import Action, ActionApproved, ActionProposed, Event
from charter.store import make_engine, serialized
from services.policy import limits
from services.policy import store as policy_store
from services.policy.bundle import PolicyBundle
from services.policy.decide import Context, decide, forged, usage_keys

REPO = Path(__file__).resolve().parent.parent
CORE = """
@id("refund-over-limit") forbid (principal, action == Action::"issue_refund", resource) when { context.parameters.amount > 5000 };
@id("no-production-admin") forbid (principal, action == Action::"grant_access", resource)
  when { context.parameters.level == "admin" && context.parameters.target_environment == "production" };
@id("refund-large") @approval("finance") permit (principal in Role::"support", action == Action::"issue_refund", resource)
  when { context.parameters.amount > 100 && context.parameters.amount <= 5000 };
@id("refund-small") permit (principal in Role::"support", action == Action::"issue_refund", resource)
  when { context.parameters.amount <= 100 };
@id("support-tools") permit (principal in Role::"support", action in [Action::"lookup_order", Action::"notify_customer"], resource);
@id("it-read-access") permit (principal in Role::"it", action == Action::"grant_access", resource)
  when { context.parameters.level == "read" };
"""
CORE_RULES = 6
# Limits that bind nothing, but are all counted: the accounting is part of the path.
LIMITS = "defaults: {budget_per_run: 1000000000, budget_per_day: 1000000000, rate: {count: 1000000000, per_seconds: 60}}\n"
ACTIONS: list[dict[str, Any]] = [
    {"agent": "support-refunds", "roles": ["support"], "tool": "issue_refund", "resource": "order/A-1001",
     "parameters": {"order_id": "A-1001", "amount": 40, "currency": "EUR"}, "environment": "production"},
    {"agent": "support-refunds", "roles": ["support"], "tool": "issue_refund", "resource": "order/A-1002",
     "parameters": {"order_id": "A-1002", "amount": 2500, "currency": "EUR"}, "environment": "production"},
    {"agent": "support-refunds", "roles": ["support"], "tool": "issue_refund", "resource": "order/A-1003",
     "parameters": {"order_id": "A-1003", "amount": 9000, "currency": "EUR"}, "environment": "production"},
    {"agent": "it-access", "roles": ["it"], "tool": "grant_access", "resource": "system/production/wiki",
     "parameters": {"user": "sam", "system": "wiki", "level": "read", "target_environment": "production"},
     "environment": "production"},
]  # fmt: skip
EXPECTED = ["allow", "approval", "deny", "allow"]


def policy_dir(root: Path, rules: int) -> Path:
    directory = root / f"policies-{rules}"
    directory.mkdir(parents=True)
    fillers = "".join(
        f'@id("filler-{i:03d}") permit (principal in Role::"role_{i:03d}", action == Action::"tool_{i:03d}", resource);\n'
        for i in range(rules - CORE_RULES)
    )
    (directory / "bench.cedar").write_text(CORE + fillers)
    shutil.copy(REPO / "policies" / "resources.yaml", directory / "resources.yaml")
    (directory / "limits.yaml").write_text(LIMITS)
    return directory


# The planner signs every proposal; policy verifies each before it decides (services/policy).
PLANNER = signing.Signer(Ed25519PrivateKey.generate())


def proposals(count: int) -> list[bytes]:
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        a = ACTIONS[i % len(ACTIONS)]
        run = f"bench-{i}"
        action = Action(
            action_id=derive_id(run, "action"), step_index=0, step_id="s", tool=a["tool"], resource=a["resource"],
            parameters=a["parameters"], environment=a["environment"],
        )  # fmt: skip
        event = ActionProposed.create(
            event_id=derive_id(run, "proposed"), now=now, tenant="bench", agent=a["agent"], run_id=run,
            correlation_id=run, action=action,
        )  # fmt: skip
        out.append(serde.encode(PLANNER.sign(event)))
    return out


def outcome(event: Event) -> str:
    return str(event.decision.outcome)  # type: ignore[attr-defined]


def stats(samples: list[int]) -> dict[str, float]:
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "per_s": 1e9 / statistics.fmean(samples),
    }


def timed(fn: Callable[[bytes], object], inputs: Sequence[bytes], warmup: int) -> dict[str, float]:
    for data in inputs[:warmup]:
        fn(data)
    # As the services do after start: what was loaded stays out of the collector's way.
    gc.collect()
    gc.freeze()
    samples = []
    for data in inputs[warmup:]:
        started = time.perf_counter_ns()
        fn(data)
        samples.append(time.perf_counter_ns() - started)
    return stats(samples)


def charter_path(ctx: Context, inputs: Sequence[bytes], warmup: int) -> tuple[dict[str, float], list[str]]:
    usage = limits.Usage()
    now = datetime.now(UTC)
    # The service verifies the planner's signature on every proposal and signs every
    # ActionApproved it sends (Ed25519), so the path includes both.
    signer = signing.Signer(Ed25519PrivateKey.generate())
    checked = replace(ctx, planner_key=PLANNER.verifier)

    def one(data: bytes) -> list[bytes]:
        event = serde.decode(data)
        if not isinstance(event, ActionProposed) or forged(event, checked) is not None:
            raise SystemExit(f"not a genuine proposal: {event}")
        outputs = decide(event, ctx, usage, now)
        return [serde.encode(signer.sign(o) if isinstance(o, ActionApproved) else o) for o in outputs]

    outcomes = [outcome(decide(serde.decode(d), ctx, limits.Usage(), now)[0]) for d in inputs[:4]]  # type: ignore[arg-type]
    return timed(one, inputs, warmup), outcomes


def decision_only(ctx: Context, inputs: Sequence[bytes], warmup: int) -> dict[str, float]:
    """The decision alone, events already decoded: what the toolkit's figure covers."""
    usage = limits.Usage()
    now = datetime.now(UTC)
    events = {data: serde.decode(data) for data in inputs}
    return timed(lambda data: decide(events[data], ctx, usage, now), inputs, warmup)  # type: ignore[arg-type]


def with_store(ctx: Context, inputs: Sequence[bytes], root: Path, batch: int = 100) -> dict[str, float]:
    """Per decision, decided in batches the way the service does, the store included."""
    engine = make_engine(f"sqlite:///{root / 'policy.db'}")
    policy_store.create(engine)
    per_decision: list[int] = []
    for start in range(0, len(inputs), batch):
        chunk = [serde.decode(d) for d in inputs[start : start + batch]]
        began = time.perf_counter_ns()
        now = datetime.now(UTC)
        with serialized(engine, policy_store.LOCK) as conn:
            usage = policy_store.load_usage(conn, [k for e in chunk for k in usage_keys(e, ctx, now)])  # type: ignore[arg-type]
            decided = []
            for event in chunk:
                outputs = decide(event, ctx, usage, now)  # type: ignore[arg-type]
                decided.append((event, outputs))
                for out in outputs:
                    serde.encode(out)
            policy_store.save_usage(conn, usage)
            policy_store.inbox.record_many(conn, decided, now)
        per_decision += [(time.perf_counter_ns() - began) // len(chunk)] * len(chunk)
    engine.dispose()
    return stats(per_decision)


def agt(python: str, rule_counts: list[int], calls: int, warmup: int) -> dict[str, Any]:
    job = {"actions": ACTIONS, "rules": rule_counts, "calls": calls, "warmup": warmup}
    runner = Path(__file__).with_name("agt_runner.py")
    done = subprocess.run(
        [python, str(runner)], input=json.dumps(job), capture_output=True, text=True, check=True, timeout=1800
    )
    return dict(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--agt", default=str(REPO / "bench" / ".venv-agt" / "bin" / "python"))
    args = parser.parse_args()
    warmup = 2_000
    registry = tools.load(["charter.demo.tools"])
    agent_set = agents.load(REPO / "agents", registry)
    inputs = proposals(args.calls + warmup)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rules in (10, 100):
            bundle = PolicyBundle.load(policy_dir(root, rules))
            assert bundle.error is None, bundle.error
            ctx = Context(bundle, agent_set, registry)
            figures, outcomes = charter_path(ctx, inputs, warmup)
            assert outcomes == EXPECTED, outcomes
            rows.append({"engine": "Charter (decode, Cedar, limits, encode)", "policies": rules, **figures})
            only = decision_only(
                Context(PolicyBundle.load(policy_dir(root / f"only-{rules}", rules)), agent_set, registry),
                inputs,
                warmup,
            )
            rows.append({"engine": "Charter, the decision alone (no Avro)", "policies": rules, **only})
            assert bundle.cedar is not None
            whole = cedarpy.PolicySet.from_json_str(json.dumps(bundle.cedar._merged))
            bundle.cedar._by_tool = {a["tool"]: whole for a in ACTIONS}
            figures, _ = charter_path(ctx, inputs, warmup)
            rows.append({"engine": "Charter, Cedar given every policy", "policies": rules, **figures})
            store_root = root / f"store-{rules}"
            store_root.mkdir()
            ctx = Context(PolicyBundle.load(policy_dir(store_root, rules)), agent_set, registry)
            stored = with_store(ctx, inputs[:10_000], store_root)
            rows.append({"engine": "Charter with its store (batches of 100)", "policies": rules, **stored})
        theirs = agt(args.agt, [10, 100], args.calls, warmup)
        assert theirs["outcomes"] == EXPECTED, theirs["outcomes"]
        for rules, figures in theirs["timings"].items():
            rows.append(
                {
                    "engine": "Agent Governance Toolkit 5.0.0 (PolicyEngine.evaluate)",
                    "policies": int(rules),
                    **figures,
                }
            )
    print(f"{'engine':<58} {'policies':>8} {'p50 µs':>8} {'p99 µs':>8} {'decisions/s':>12}")
    for row in rows:
        print(
            f"{row['engine']:<58} {row['policies']:>8} {row['p50_us']:>8.1f} {row['p99_us']:>8.1f} {row['per_s']:>12,.0f}"
        )
    out = REPO / "bench" / "results" / "policy.json"
    out.write_text(json.dumps({"calls": args.calls, "outcomes": EXPECTED, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
