"""What every Charter service counts, in one place, so the dashboard (infra/grafana) and `charter
top` name the same series the services export.

Each process exports its own figures at its metrics endpoint (charter.metrics_server). Counters
count what this process handled; figures that belong to the whole system (pending approvals, runs
in flight, dead letters waiting) are gauges read from the owning service's store at scrape time.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

# Seconds, from a cached policy decision (well under 1 ms) to a human approval (hours).
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_WAIT = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86_400, 7 * 86_400)
_COST = (0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)

# Every service.
records = Counter("charter_records", "Records handled, by service and event type.", ["service", "event_type"])
record_seconds = Histogram(
    "charter_record_seconds", "Time to decide one record, by service.", ["service"], buckets=_LATENCY
)
dead_letters = Counter(
    "charter_dead_letters", "Records dead-lettered, by service and source topic.", ["service", "topic"]
)
handler_retries = Counter("charter_handler_retries", "Handler attempts retried, by service.", ["service"])
tenant_records = Gauge(
    "charter_tenant_records",
    "Records of each tenant a keyed service holds: in hand (a slot each), or queued for a slot.",
    ["service", "tenant", "state"],
)
records_in_flight = Gauge(
    "charter_records_in_flight",
    "Records fetched and not yet finished (queued, or waiting on a model or a tool), by service.",
    ["service"],
)
consumer_lag = Gauge(
    "charter_consumer_lag",
    "Records on the broker not yet consumed, by service, topic and partition.",
    ["service", "topic", "partition"],
)

# Planner.
runs_started = Counter("charter_runs_started", "Runs started, by agent.", ["agent"])
runs_ended = Counter("charter_runs", "Runs ended, by agent and outcome.", ["agent", "outcome"])
run_seconds = Histogram(
    "charter_run_seconds", "Run start to end, by agent and outcome.", ["agent", "outcome"], buckets=_LATENCY
)
step_seconds = Histogram(
    "charter_step_seconds",
    "A step: action proposed to its result reaching the planner, by agent and tool.",
    ["agent", "tool"],
    buckets=_LATENCY,
)
run_cost = Histogram("charter_run_cost_usd", "Model cost of a run, by agent.", ["agent"], buckets=_COST)
run_tokens = Counter("charter_run_tokens", "Model tokens used by ended runs, by agent.", ["agent"])
human_interventions = Counter(
    "charter_human_interventions",
    "Humans acting on runs: approvals decided, runs resumed or cancelled.",
    ["kind"],
)
model_calls = Counter("charter_model_calls", "Model calls, by model and outcome.", ["model", "outcome"])

# Policy.
decisions = Counter(
    "charter_policy_decisions", "Policy decisions, by outcome and reason.", ["outcome", "reason"]
)
decide_seconds = Histogram(
    "charter_policy_decide_seconds", "One policy decision, Cedar included.", buckets=_LATENCY
)

# Approvals.
approval_wait = Histogram(
    "charter_approval_wait_seconds",
    "Approval requested to decided, by outcome.",
    ["outcome"],
    buckets=_WAIT,
)

# Executor.
tool_calls = Counter("charter_tool_calls", "Tool calls, by tool and outcome.", ["tool", "outcome"])
tool_seconds = Histogram("charter_tool_call_seconds", "One tool call, by tool.", ["tool"], buckets=_LATENCY)
tool_retries = Counter("charter_tool_retries", "Tool call attempts retried, by tool.", ["tool"])

# Audit.
audit_appends = Counter("charter_audit_appends", "Records appended to the audit log.")
audit_append_seconds = Histogram(
    "charter_audit_append_seconds", "One batch appended to the audit log.", buckets=_LATENCY
)
dlq_depth = Gauge("charter_dlq_depth", "Dead letters on each dead-letter topic, not yet replayed.", ["topic"])


runs_in_flight = Gauge("charter_runs_in_flight", "Runs started and not yet ended (the planner's store).")

_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
# Read from the approvals service's store when scraped (services/approvals/metrics.py).
_APPROVALS = {"charter_approvals": "gauge", "charter_webhook_notifications": "gauge"}


def names() -> frozenset[str]:
    """The series Charter exports, for the dashboard's test: a panel naming a series no service
    exports would show nothing, silently."""
    kinds = dict(_APPROVALS)
    for family in REGISTRY.collect():
        if family.name.startswith("charter_"):
            kinds[family.name] = family.type
    return frozenset(f"{name}{suffix}" for name, kind in kinds.items() for suffix in _SUFFIXES[kind])
