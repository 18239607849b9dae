"""The stack as an operator sees it: ready in time, services restarted after a crash with their
state intact, and a stop that takes everything down within 10 s, leaving no process behind."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.events import RunCompleted
from tests.e2e.conftest import Stack, run_id, start_stack, wait_approval, wait_run_end

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("lifecycle") / "home")
    try:
        yield stack
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _restarted(stack: Stack, name: str, old_pid: int, timeout: float = 45) -> int:
    """Wait until a new process of `name` has joined its group; return its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = stack.service_pid(name)
        if pid != old_pid and _alive(pid):
            return pid
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted within {timeout}s:\n{stack.text()}")


def test_up_reports_ready_within_15_seconds(own_stack: Stack) -> None:
    match = re.search(r"ready in ([\d.]+)s", own_stack.text())
    assert match, own_stack.text()
    assert float(match.group(1)) < 15
    assert "broker=tansu" in own_stack.text()
    assert "idempotent producer off (the broker has no InitProducerId)" in own_stack.text()


def test_run_state_survives_a_planner_killed_mid_run(own_stack: Stack) -> None:
    trigger = own_stack.publish("support.refund_requested", {"order_id": "K-1001", "amount": 900})
    run = run_id(trigger, "support-refunds")
    request = wait_approval(own_stack, run)
    old = own_stack.service_pid("planner")
    os.kill(old, signal.SIGKILL)
    own_stack.cli("approvals", "approve", request.approval_id, "--as", "dana")
    _restarted(own_stack, "planner", old)
    end = wait_run_end(own_stack, run, timeout=45)
    assert isinstance(end, RunCompleted)
    assert end.steps_completed == 3
    assert "planner exited with code -9; restarting" in own_stack.text()


def test_a_killed_executor_is_restarted_and_work_resumes(own_stack: Stack) -> None:
    old = own_stack.service_pid("executor")
    os.kill(old, signal.SIGKILL)
    trigger = own_stack.publish("support.refund_requested", {"order_id": "K-2002", "amount": 25})
    _restarted(own_stack, "executor", old)
    assert isinstance(wait_run_end(own_stack, run_id(trigger, "support-refunds"), timeout=45), RunCompleted)


def test_stop_takes_everything_down_within_10_seconds(own_stack: Stack) -> None:
    services = list(own_stack.settings.home.joinpath("run", "ready").iterdir())
    pids = [int(p.read_text().split()[0]) for p in services]
    broker = int(re.search(r'"broker_pid": (\d+)', own_stack.settings.stack_file.read_text()).group(1))  # type: ignore[union-attr]
    assert len(pids) == 5
    took = own_stack.stop()
    assert took < 10
    assert own_stack.proc.returncode == 0
    assert not [p for p in [*pids, broker] if _alive(p)]
    assert not own_stack.settings.stack_file.exists()
