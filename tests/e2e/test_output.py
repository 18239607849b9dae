"""`--output json|jsonl` on every listing and showing command, anywhere on the command line: what
each prints parses, and names what its text form shows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from charter.cli import exits
from tests.e2e.conftest import Stack, audited_run, run_id, wait_approval

pytestmark = pytest.mark.e2e


def _json(stack: Stack, *args: str, user: str | None = None) -> Any:
    ran = stack.as_user(user, *args) if user else stack.cli(*args)
    return json.loads(ran.stdout)


def _jsonl(stack: Stack, *args: str) -> list[Any]:
    return [json.loads(line) for line in stack.cli(*args).stdout.splitlines() if line.strip()]


def test_every_listing_and_showing_command_prints_json(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "J-3001", "amount": 700})
    run = run_id(trigger, "support-refunds")
    request = wait_approval(stack, run)  # recorded as pending
    audited_run(stack, run)

    listed = _json(stack, "runs", "--output", "json")
    assert isinstance(listed, list)
    assert run in [r["run_id"] for r in listed]
    assert {"agent", "trigger", "started", "status", "last"} <= set(listed[0])
    assert run in [r["run_id"] for r in _jsonl(stack, "--output", "jsonl", "runs", "list")]

    shown = _json(stack, "--output=json", "runs", "show", run[:8])
    assert shown["run"]["run_id"] == run
    assert shown["run"]["agent"] == "support-refunds"
    assert "RunStarted" in [t["event_type"] for t in shown["timeline"]]

    approvals = _json(stack, "approvals", "list", "--output", "json", user="dana")
    assert request.approval_id in [a["approval_id"] for a in approvals]
    one = _json(stack, "approvals", "show", request.approval_id[:8], "--output", "json", user="dana")
    assert one["approval"]["approval_id"] == request.approval_id
    assert one["approval"]["parameters"]["order_id"] == "J-3001"  # whole, never cut to a width

    assert all("token_id" in t for t in _json(stack, "tokens", "list", "--output", "json"))
    switches = _json(stack, "kill-switch", "status", "--output", "json")
    assert all({"switch_id", "since", "set_by", "reason"} == set(s) for s in switches)
    verified = _json(stack, "audit", "verify", "--output", "json")
    assert verified["ok"] is True
    assert verified["records"] > 0
    agents = _json(stack, "agents", "--output", "json")
    assert "support-refunds" in [a["id"] for a in agents]
    assert isinstance(_json(stack, "dlq", "list", "--output", "json"), list)
    replayed = _jsonl(
        stack, "replay", "--topic", "runs", "--from-beginning", "--run", run, "--output", "json"
    )
    assert replayed[0]["event"]["envelope"]["event_type"] == "RunStarted"
    assert {r["event"]["envelope"]["run_id"] for r in replayed} == {run}


def test_an_unknown_output_format_is_a_usage_error(stack: Stack) -> None:
    refused = stack.cli("runs", "--output", "yaml", check=False)
    assert refused.returncode == exits.USAGE
    assert refused.stderr.strip() == "charter: --output takes text, json or jsonl, not 'yaml'"


def test_publish_names_its_runs_and_waits_for_their_ends(stack: Stack) -> None:
    done = _json(
        stack,
        "publish",
        "support.refund_requested",
        "--data",
        '{"order_id": "J-3002", "amount": 30}',
        "--wait",
        "--output",
        "json",
    )
    (started,) = done["starts"]
    assert started["agent"] == "support-refunds"
    assert [r["run_id"] for r in done["ended"]] == [started["run_id"]]
    assert done["ended"][0]["status"] == "completed"

    # A refund policy forbids: the run ends failed, and --wait says so with exit 1.
    refused = stack.cli(
        "publish",
        "support.refund_requested",
        "--data",
        '{"order_id": "J-3003", "amount": 9000}',
        "--wait",
        check=False,
    )
    assert refused.returncode == exits.FAILED, refused.stdout + refused.stderr
    assert "failed: run failed (action_rejected)" in refused.stdout

    # One that waits for a person is still running when --wait gives up: said, and exit 1.
    waiting = stack.cli(
        "publish",
        "support.refund_requested",
        "--data",
        '{"order_id": "J-3004", "amount": 700}',
        "--wait",
        "--wait-timeout",
        "15",
        check=False,
    )
    assert waiting.returncode == exits.FAILED
    assert "awaiting approval" in waiting.stdout
    assert "still running after 15s" in waiting.stderr
