"""The stack as an operator sees it: ready in time, services restarted after a crash with their
state intact, and a stop that takes everything down within 10 s, leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator

import pytest

from charter.demo import ledger
from charter.events import RunCompleted
from tests.e2e.conftest import (
    Stack,
    alive,
    approve_when_up,
    broker_env,
    run_events,
    run_id,
    start_stack,
    wait_approval,
    wait_restarted,
    wait_run_end,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_stack(
    broker: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp(f"lifecycle-{broker}") / "home", **broker_env(request, broker)
    )
    try:
        yield stack
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()


def test_up_reports_ready_within_15_seconds(own_stack: Stack) -> None:
    match = re.search(r"ready in ([\d.]+)s", own_stack.text())
    assert match, own_stack.text()
    assert float(match.group(1)) < 15
    text = own_stack.text()
    if own_stack.broker == "tansu":
        assert "broker=tansu: acks=all, idempotent producer off (the broker has no InitProducerId)" in text
        assert "transactions unavailable on this broker" in text
    else:
        assert "broker=kafka: acks=all, idempotent producer on; transactions on" in text


@pytest.mark.parametrize("service", ["planner", "approvals", "executor"])
def test_a_run_waiting_for_approval_survives_a_killed_stateful_service(
    own_stack: Stack, service: str
) -> None:
    """Kill the service mid-run with SIGKILL; the supervisor restarts it, its state comes back
    from its store, the approval goes through, and the refund happens exactly once."""
    order = {"planner": "K-1001", "approvals": "K-1002", "executor": "K-1003"}[service]
    trigger = own_stack.publish("support.refund_requested", {"order_id": order, "amount": 900})
    run = run_id(trigger, "support-refunds")
    request = wait_approval(own_stack, run)
    old = own_stack.service_pid(service)
    os.kill(old, signal.SIGKILL)
    if service == "approvals":
        # It serves the API: once it is back, the approval is still pending, and is decided.
        wait_restarted(own_stack, service, old)
        approve_when_up(own_stack, request.approval_id)
    else:
        # Decided while the service is down (or coming back): nothing may be lost either way.
        own_stack.as_user("dana", "approvals", "approve", request.approval_id)
        wait_restarted(own_stack, service, old)
    end = wait_run_end(own_stack, run, timeout=60)
    assert isinstance(end, RunCompleted)
    assert end.steps_completed == 3
    refunds = [
        e for e in ledger.entries(own_stack.settings.data_dir) if e["run_id"] == run and e["kind"] == "refund"
    ]
    assert len(refunds) == 1
    assert f"{service} exited with code -9; restarting" in own_stack.text()


def test_the_audit_log_is_whole_after_its_service_is_killed(own_stack: Stack) -> None:
    old = own_stack.service_pid("audit")
    os.kill(old, signal.SIGKILL)
    trigger = own_stack.publish("support.refund_requested", {"order_id": "K-3003", "amount": 25})
    run = run_id(trigger, "support-refunds")
    assert isinstance(wait_run_end(own_stack, run, timeout=45), RunCompleted)
    wait_restarted(own_stack, "audit", old)
    on_topics = {
        e.event_id
        for e in run_events(own_stack, run, "runs", "actions.proposed", "actions.approved", "actions.results")
    }
    deadline = time.monotonic() + 30
    audited: list[str] = []
    while time.monotonic() < deadline and not on_topics <= set(audited):
        with sqlite3.connect(own_stack.settings.data_dir / "audit.db") as conn:
            audited = [r[0] for r in conn.execute("select event_id from audit_log where run_id = ?", (run,))]
        time.sleep(0.2)
    assert on_topics <= set(audited)
    assert len(audited) == len(set(audited))
    assert "audit log verified" in own_stack.cli("audit", "verify").stdout


def test_stop_takes_everything_down_within_10_seconds(own_stack: Stack) -> None:
    services = list(own_stack.settings.home.joinpath("run", "ready").iterdir())
    pids = [int(p.read_text().split()[0]) for p in services]
    broker_pid = json.loads(own_stack.settings.stack_file.read_text())["broker_pid"]
    assert len(pids) == 5
    took = own_stack.stop()
    assert took < 10
    assert own_stack.proc.returncode == 0
    # On Kafka the stack started no broker (the session's is shared); on Tansu it did.
    assert (broker_pid is None) == (own_stack.broker == "kafka")
    assert not [p for p in [*pids, broker_pid] if p and alive(p)]
    assert not own_stack.settings.stack_file.exists()
