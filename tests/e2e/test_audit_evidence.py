"""Evidence from the running stack: signed heads published to audit.checkpoints, a run's bundle
verified by another process with nothing but the file, and truncation caught by the published
heads after the database's own were cut away too."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from charter.client import Client
from charter.events import CheckpointSigned
from tests.conftest import REPO
from tests.e2e.conftest import Stack, audited_run, run_id, stack_env, wait_approval, wait_run_end

pytestmark = pytest.mark.e2e


def _export_when_signed(stack: Stack, run: str, out: Path, timeout: float = 30) -> str:
    """Export the run's bundle once a signed head covers its records (one is signed within
    CHARTER_AUDIT_CHECKPOINT_SECONDS), and once the log holds all of them."""
    audited_run(stack, run)
    deadline = time.monotonic() + timeout
    while True:
        result = stack.cli("audit", "export", "--run", run, "--out", str(out), check=False)
        if result.returncode == 0:
            return result.stdout
        assert "not covered by a signed head yet" in result.stderr or "no audit records" in result.stderr, (
            result.stderr
        )
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.5)


def _alone(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """charter in a process of its own, in an empty directory, with no Charter settings at all."""
    env = {k: v for k, v in stack_env(cwd).items() if not k.startswith("CHARTER_")}
    env["CHARTER_HOME"] = str(cwd / "nothing-here")
    return _run(list(args), env, cwd)


def test_a_runs_bundle_verifies_offline_in_another_process(stack: Stack, tmp_path: Path) -> None:
    trigger = stack.publish(
        "support.refund_requested", {"order_id": "E-1001", "amount": 30, "customer_id": "cust-9"}
    )
    run = run_id(trigger, "support-refunds")
    wait_run_end(stack, run)
    bundle = tmp_path / "out" / "evidence.zip"
    bundle.parent.mkdir()
    assert "records, proven in the head of size" in _export_when_signed(stack, run, bundle)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(bundle, elsewhere / "evidence.zip")
    key_id = next(
        line.split()[1] for line in stack.cli("keys", "show").stdout.splitlines() if line.startswith("audit")
    )
    ok = _alone("audit", "verify-bundle", "evidence.zip", "--key-id", key_id, cwd=elsewhere)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "bundle verified" in ok.stdout
    foreign = _alone("audit", "verify-bundle", "evidence.zip", "--key-id", "0" * 64, cwd=elsewhere)
    assert foreign.returncode == 1
    assert f"signed by key {key_id}, not the required" in foreign.stdout
    assert not (elsewhere / "nothing-here").exists()  # it opened no store and made no home

    with zipfile.ZipFile(bundle) as z:
        lines = z.read("events.jsonl").decode().splitlines()
        members = {n: z.read(n) for n in z.namelist()}
    records = [json.loads(line) for line in lines]
    assert all(r["attribution"]["run_id"] == run for r in records)
    assert {r["attribution"]["event_type"] for r in records} >= {
        "RunStarted",
        "ActionExecuted",
        "RunCompleted",
    }

    # One changed amount in one record, and the bundle no longer verifies, naming the record.
    victim = next(r for r in records if r["attribution"]["event_type"] == "ActionExecuted")
    victim["event"]["action"]["parameters"]["amount"] = 3000
    tampered = elsewhere / "tampered.zip"
    members["events.jsonl"] = "".join(json.dumps(r) + "\n" for r in records).encode()
    with zipfile.ZipFile(tampered, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    broken = _alone("audit", "verify-bundle", "tampered.zip", cwd=elsewhere)
    assert broken.returncode == 1
    assert f"record {victim['seq']}: the decoded event shown differs from its signed bytes" in broken.stdout


def _published(stack: Stack) -> list[CheckpointSigned]:
    async def go() -> list[CheckpointSigned]:
        async with Client(stack.settings) as client:
            return [
                r.event
                async for r in client.replay("audit.checkpoints")
                if isinstance(r.event, CheckpointSigned)
            ]

    return asyncio.run(go())


def test_heads_are_published_and_a_truncated_copy_is_caught_by_them(stack: Stack, tmp_path: Path) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "E-2002", "amount": 30})
    wait_run_end(stack, run_id(trigger, "support-refunds"))
    deadline = time.monotonic() + 30
    while not (heads := _published(stack)):
        assert time.monotonic() < deadline, "no signed head was published"
        time.sleep(0.5)
    first = max(h.size for h in heads)
    again = stack.publish("support.refund_requested", {"order_id": "E-2003", "amount": 30})
    wait_run_end(stack, run_id(again, "support-refunds"))
    while (newest := max(h.size for h in _published(stack))) == first:
        assert time.monotonic() < deadline + 30, "no second head was published"
        time.sleep(0.5)
    verified = stack.cli("audit", "verify")
    assert "audit log verified" in verified.stdout
    assert "warning" not in verified.stdout  # every head it published is on the topic
    published = int(verified.stdout.split("(")[1].split()[0])
    assert published >= 2, verified.stdout

    inclusion = json.loads(stack.cli("audit", "proof", "inclusion", "1", "--size", str(newest)).stdout)
    assert (inclusion["head"]["size"], inclusion["seq"]) == (newest, 1)
    assert len(inclusion["proof"]["path"]) >= 2
    consistency = json.loads(stack.cli("audit", "proof", "consistency", str(first), str(newest)).stdout)
    assert (consistency["prior"]["size"], consistency["later"]["size"]) == (first, newest)

    # A copy of the store cut back below the newest published head, its own heads cut with it.
    copy = tmp_path / "copy"
    (copy / "data").mkdir(parents=True)
    with (
        sqlite3.connect(stack.settings.data_dir / "audit.db") as src,
        sqlite3.connect(copy / "data" / "audit.db") as dst,
    ):
        src.backup(dst)
    keep = newest - 1
    with sqlite3.connect(copy / "data" / "audit.db") as conn:
        conn.execute("delete from audit_log where seq > ?", (keep,))
        conn.execute("delete from audit_checkpoints where size > ?", (keep,))
    env = stack_env(copy, CHARTER_KEYS_DIR=str(stack.settings.keys), **_broker_of(stack))
    offline = _run(["audit", "verify", "--offline"], env)
    assert offline.returncode == 0, offline.stdout  # the database alone looks whole...
    online = _run(["audit", "verify"], env)
    assert online.returncode == 1  # ...the heads on the broker say otherwise
    assert f"[truncated] the log ends after {keep} rows" in online.stdout


def _broker_of(stack: Stack) -> dict[str, str]:
    """The running stack's broker, for a process whose home is elsewhere."""
    s = stack.settings
    return {
        "CHARTER_BOOTSTRAP_SERVERS": s.bootstrap(),
        "CHARTER_BROKER": s.broker_kind,
        "CHARTER_TOPIC_PREFIX": s.topic_prefix,
    }


def _run(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charter", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def _replayed(stack: Stack, run: str, *args: str) -> str:
    """`replay-decisions --run`, once the audit holds the run's last records."""
    audited_run(stack, run)
    deadline = time.monotonic() + 30
    while (out := stack.cli("audit", "replay-decisions", "--run", run, *args, check=False)).returncode != 0:
        assert time.monotonic() < deadline, out.stdout
        time.sleep(0.5)
    return out.stdout


def test_recorded_decisions_replay_to_the_same_outputs(stack: Stack) -> None:
    small = stack.publish("support.refund_requested", {"order_id": "R-1001", "amount": 30})
    denied = stack.publish("support.refund_requested", {"order_id": "R-1002", "amount": 90_000})
    approved = stack.publish("support.refund_requested", {"order_id": "R-1005", "amount": 750})
    request = wait_approval(stack, run_id(approved, "support-refunds"))
    stack.as_user("dana", "approvals", "approve", request.approval_id)
    for trigger in (small, denied, approved):
        wait_run_end(stack, run_id(trigger, "support-refunds"))
    # Proposals, policy decisions (allowed, denied, approval asked, decided again after the
    # human's approval) and the planner's every step: all as recorded.
    for trigger, at_least in ((small, 7), (denied, 3), (approved, 8)):
        out = _replayed(stack, run_id(trigger, "support-refunds"))
        assert "all as recorded" in out
        assert int(out.split("replayed ")[1].split()[0]) >= at_least, out


def test_a_decision_that_would_now_differ_is_reported_with_its_cause(stack: Stack, tmp_path: Path) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "R-1003", "amount": 40})
    run = run_id(trigger, "support-refunds")
    wait_run_end(stack, run)
    # The same history against an agent whose notify message has changed since.
    agents = tmp_path / "agents"
    shutil.copytree(stack.settings.agents_dir, agents)
    playbook = agents / "support-refunds.yaml"
    playbook.write_text(playbook.read_text().replace("We refunded", "We have refunded"))
    env = {**stack.env, "CHARTER_AGENTS_DIR": str(agents)}
    audited_run(stack, run)
    deadline = time.monotonic() + 30
    while True:
        changed = _run(["audit", "replay-decisions", "--run", run], env)
        if "message" in changed.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert changed.returncode == 1
    assert "1 DIVERGENCES" in changed.stdout
    assert "planner on ActionExecuted" in changed.stdout
    assert "action.parameters: replayed" in changed.stdout
    assert "We have refunded 40 EUR" in changed.stdout
