"""What an operator sees of a run: one trace across the five services, and each service's
metrics, scraped the way Prometheus would."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict
from typing import Any

import pytest

from charter.client import Client
from charter.events import RunCompleted
from charter.stack.readiness import SERVICES
from tests.e2e.conftest import (
    Stack,
    approve_when_up,
    run_id,
    samples,
    scrape,
    value,
    wait_approval,
    wait_run_end,
)

pytestmark = pytest.mark.e2e


def _approved_refund(stack: Stack, order: str) -> str:
    """A refund large enough to wait for finance, approved by dana through the API."""
    trigger = stack.publish("support.refund_requested", {"order_id": order, "amount": 2500})
    run = run_id(trigger, "support-refunds")
    approve_when_up(stack, wait_approval(stack, run).approval_id)
    assert isinstance(wait_run_end(stack, run), RunCompleted)
    return run


def _trace_of(stack: Stack, run: str) -> str:
    async def ids() -> set[str | None]:
        found: set[str | None] = set()
        async with Client(stack.settings) as client:
            for topic in ("runs", "actions.proposed", "actions.approved", "actions.results"):
                async for received in client.replay(topic, run_id=run):
                    found.add(received.trace_id)
        return found

    header_ids = asyncio.run(ids())
    # Every event of the run, the human's approval included, carries the same trace.
    assert len(header_ids) == 1, header_ids
    [trace_id] = header_ids
    assert trace_id is not None
    return trace_id


def _spans(stack: Stack, trace_id: str) -> dict[str, list[dict[str, Any]]]:
    """The run's exported spans, by service."""
    spans: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in stack.settings.logs_dir.glob("traces-*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            if span["context"]["trace_id"] == f"0x{trace_id}":
                spans[path.stem.removeprefix("traces-")].append(span)
    return spans


def test_one_run_is_one_trace_across_the_five_services(stack: Stack) -> None:
    run = _approved_refund(stack, "O-1001")
    trace_id = _trace_of(stack, run)
    wanted = {
        "planner": "planner ActionExecuted",
        "policy": "cedar is_authorized",
        "approvals": "approval wait",
        "executor": "tool issue_refund",
        "audit": "audit append",
    }
    deadline = time.monotonic() + 30
    while True:
        spans = _spans(stack, trace_id)
        names = {service: {s["name"] for s in found} for service, found in spans.items()}
        if all(name in names.get(service, set()) for service, name in wanted.items()):
            break
        assert time.monotonic() < deadline, f"spans of trace {trace_id} by service: {names}"
        time.sleep(0.3)
    assert set(SERVICES) <= set(spans)
    assert {"policy decide", "policy revalidate"} <= names["policy"]
    [wait] = [s for s in spans["approvals"] if s["name"] == "approval wait"]
    assert wait["attributes"]["charter.approval.outcome"] == "approved"
    assert wait["attributes"]["charter.approval.decided_by"] == "dana"
    [call] = [s for s in spans["executor"] if s["name"] == "tool issue_refund"]
    assert call["kind"] == "SpanKind.CLIENT"
    # The Cedar evaluation is a child of the decision it is part of.
    decides = {s["context"]["span_id"] for s in spans["policy"] if s["name"] == "policy decide"}
    assert any(s["parent_id"] in decides for s in spans["policy"] if s["name"] == "cedar is_authorized")


def test_every_service_exports_its_metrics_to_a_scraper_holding_the_token(stack: Stack) -> None:
    _approved_refund(stack, "O-1002")
    for service in SERVICES:
        refused = scrape(stack, service, None)
        assert refused.status_code == 401, (service, refused.text)
        assert scrape(stack, service, "not-the-token").status_code == 401

    # The audit service records the run's end a moment after the planner sends it.
    deadline = time.monotonic() + 30
    while not value(samples(stack, "audit"), "charter_audit_appends_total"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    got = {service: samples(stack, service) for service in SERVICES}
    for service in SERVICES:
        assert value(got[service], "charter_records_total", service=service) > 0, service
        assert "charter_consumer_lag" in got[service], service
        assert "process_resident_memory_bytes" in got[service], service

    planner = got["planner"]
    assert value(planner, "charter_runs_total", agent="support-refunds", outcome="completed") >= 1
    assert value(planner, "charter_runs_started_total", agent="support-refunds") >= 1
    assert value(planner, "charter_run_seconds_count", agent="support-refunds", outcome="completed") >= 1
    assert value(planner, "charter_step_seconds_count", agent="support-refunds", tool="issue_refund") >= 1
    assert "charter_runs_in_flight" in planner
    policy = got["policy"]
    assert value(policy, "charter_policy_decisions_total", outcome="approval") >= 1
    assert value(policy, "charter_policy_decisions_total", outcome="allow") >= 1
    assert value(policy, "charter_policy_decide_seconds_count") >= 1
    approvals = got["approvals"]
    assert value(approvals, "charter_approval_wait_seconds_count", outcome="approved") >= 1
    assert value(approvals, "charter_human_interventions_total", kind="approval") >= 1
    assert "charter_approvals" in approvals  # the store's figures, served with the process's
    executor = got["executor"]
    assert value(executor, "charter_tool_calls_total", tool="issue_refund", outcome="executed") >= 1
    assert value(executor, "charter_tool_call_seconds_count", tool="issue_refund") >= 1
    assert value(got["audit"], "charter_audit_appends_total") > 0


def test_top_shows_rates_denials_and_every_service(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "O-1003", "amount": 9000})
    wait_run_end(stack, run_id(trigger, "support-refunds"))
    out = stack.cli("top", "--once", "--interval", "0.5").stdout
    assert "runs/s ended" in out
    assert "pending approvals" in out
    # Whole things are counted in whole numbers (Prometheus serves every value as a float).
    assert re.search(r"in flight\s+\d+\s*$", out, re.MULTILINE), out
    assert re.search(r"pending approvals\s+(\d+|-)\s*$", out, re.MULTILINE), out
    # The denial is counted under the policy that made it.
    assert "refund-over-limit" in out
    for service in SERVICES:
        assert f"{service}" in out
    assert "down" not in out, out
