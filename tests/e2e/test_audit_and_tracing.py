"""The audit log over real traffic, tampering found on a copy of the store, and one trace per run."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from charter.cli import exits
from charter.client import Client, Received
from tests.e2e.conftest import Stack, audited_run, run_id, stack_env, wait_audited, wait_run_end

pytestmark = pytest.mark.e2e


def _snapshot(stack: Stack, into: Path) -> Path:
    """A consistent copy of the audit store, so tampering never touches the live one."""
    (into / "data").mkdir(parents=True)
    with (
        sqlite3.connect(stack.settings.data_dir / "audit.db") as src,
        sqlite3.connect(into / "data" / "audit.db") as dst,
    ):
        src.backup(dst)
    return into


def test_audit_verify_passes_and_names_an_altered_row(stack: Stack, tmp_path: Path) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "V-1001", "amount": 30})
    end = wait_run_end(stack, run_id(trigger, "support-refunds"))
    wait_audited(stack, end.event_id)
    ok = stack.cli("audit", "verify")
    assert "audit log verified" in ok.stdout

    copy = _snapshot(stack, tmp_path / "copy")
    with sqlite3.connect(copy / "data" / "audit.db") as conn:
        seq, value = conn.execute(
            "select seq, value from audit_log where event_id = ?", (end.event_id,)
        ).fetchone()
        altered = bytearray(value)
        altered[-3] ^= 0xFF
        conn.execute("update audit_log set value = ? where seq = ?", (bytes(altered), seq))
    broken = subprocess.run(
        [sys.executable, "-m", "charter", "audit", "verify", "--offline"],
        capture_output=True,
        text=True,
        env=stack_env(copy, CHARTER_KEYS_DIR=str(stack.settings.keys)),
        timeout=60,
        check=False,
    )
    assert broken.returncode == 1
    assert "audit log BROKEN" in broken.stdout
    assert f"[altered] row {seq} (event {end.event_id})" in broken.stdout
    # The live store is untouched and still verifies.
    assert stack.cli("audit", "verify").returncode == 0


def test_every_topic_is_audited_once(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "V-2002", "amount": 30})
    run = run_id(trigger, "support-refunds")
    wait_run_end(stack, run)
    audited = audited_run(stack, run)  # every event of the run on its topics, or it fails
    assert len(audited) == len(set(audited))


def test_replay_prints_a_runs_events_and_exits(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "R-1001", "amount": 30})
    run = run_id(trigger, "support-refunds")
    wait_run_end(stack, run)
    out = stack.cli("replay", "--topic", "runs", "--from-beginning", "--run", run).stdout
    assert "RunStarted" in out
    assert "RunCompleted" in out
    assert out.strip().endswith("-- 2 events")
    # The run's first characters name it as its full id does (the API finds it in the audit).
    audited_run(stack, run)
    assert stack.cli("replay", "--topic", "runs", "--from-beginning", "--run", run[:8]).stdout == out
    as_json = stack.cli(
        "replay", "--topic", "actions.results", "--from-offset", "0", "--run", run, "--json"
    ).stdout
    records = [json.loads(line) for line in as_json.splitlines()]
    assert [r["event"]["action"]["tool"] for r in records] == [
        "lookup_order",
        "issue_refund",
        "notify_customer",
    ]
    assert all(r["trace_id"] for r in records)
    later = stack.cli("replay", "--topic", "runs", "--from-time", "2999-01-01T00:00:00").stdout
    assert later.strip() == "-- 0 events"


def test_replay_by_run_across_topics_into_a_sandbox_topic_keeps_keys_and_headers(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "R-1004", "amount": 30})
    run = run_id(trigger, "support-refunds")
    wait_run_end(stack, run)
    sandbox = f"sandbox-{run[:8]}"
    out = stack.cli("replay", "--run", run, "--to", sandbox).stdout
    count = int(out.split("-- ")[1].split()[0])
    assert count >= 8, out  # started, 3 proposals, 3 approvals, 3 results, completed

    async def read(name: str, **window: Any) -> list[Received]:
        async with Client(stack.settings) as client:
            return [r async for r in client.replay(name, other_topics=True, **window)]

    copies = asyncio.run(read(sandbox, from_offset=0))
    originals = {
        (r.topic, r.partition, r.offset): r
        for topic in ("runs", "actions.proposed", "actions.approved", "actions.results")
        for r in asyncio.run(read(topic, run_id=run))
    }
    assert len(copies) == count == len(originals)
    for copy in copies:
        marker = dict(copy.headers)["charter-replayed-from"].decode()
        topic, partition, offset = marker.rsplit(":", 2)
        original = originals[(topic, int(partition), int(offset))]
        assert (copy.key, copy.value) == (original.key, original.value)
        assert [h for h in copy.headers if h[0] != "charter-replayed-from"] == list(original.headers)
    # The CLI reads the sandbox back, as any topic on the broker, and names one that is not there.
    again = stack.cli("replay", "--topic", sandbox, "--from-beginning").stdout
    assert again.splitlines()[-1] == f"-- {count} events"
    assert all(f" {run[:8]} " in line for line in again.splitlines()[:-1])
    missing = stack.cli("replay", "--topic", f"{sandbox}-typo", "--from-beginning", check=False)
    assert missing.returncode == exits.NOT_FOUND
    assert f"topic {sandbox}-typo does not exist on" in missing.stderr
    # A time range and an offset range select less.
    none = stack.cli("replay", "--topic", "runs", "--from-beginning", "--until", "2000-01-01T00:00:00").stdout
    assert none.strip() == "-- 0 events"
    first = stack.cli("replay", "--topic", "runs", "--from-offset", "0", "--to-offset", "0", "--json").stdout
    assert all(json.loads(line)["offset"] == 0 for line in first.splitlines())
