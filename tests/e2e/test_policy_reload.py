"""The security team changes a policy file; the running policy service picks it up, announces
the new policy set on `control`, and decides by it, naming it in the decision."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from charter.events import PolicyReloaded, RunCompleted, RunFailed
from tests.e2e.conftest import Stack, run_id, wait_for, wait_run_end

pytestmark = pytest.mark.e2e

FORBID_NOTIFY = """
@id("quiet-period")
@reason("no customer messages during the quiet period")
forbid (principal, action == Action::"notify_customer", resource);
"""


def _reloaded(stack: Stack, after: float, accept: Callable[[PolicyReloaded], bool]) -> PolicyReloaded:
    """The first policy-set announcement on `control` since `after` that `accept`s."""
    event = wait_for(
        stack,
        lambda e: isinstance(e, PolicyReloaded) and e.envelope.occurred_at.timestamp() > after and accept(e),
        "control",
        timeout=20,
    )
    assert isinstance(event, PolicyReloaded)
    return event


def test_a_changed_policy_file_is_reloaded_announced_and_applied(stack: Stack) -> None:
    extra = stack.policies_dir / "quiet.cedar"
    started = time.time()
    extra.write_text(FORBID_NOTIFY)
    try:
        loaded = _reloaded(stack, started, lambda e: e.valid and "quiet-period" in e.policy_ids)
        assert "quiet.cedar" in loaded.files
        trigger = stack.publish("support.refund_requested", {"order_id": "P-1001", "amount": 20})
        end = wait_run_end(stack, run_id(trigger, "support-refunds"))
        assert isinstance(end, RunFailed)
        assert "quiet-period" in end.reason
        assert end.failed_step == 2
    finally:
        removed = time.time()
        extra.unlink()
    _reloaded(stack, removed, lambda e: e.valid and "quiet-period" not in e.policy_ids)
    trigger = stack.publish("support.refund_requested", {"order_id": "P-1002", "amount": 20})
    assert isinstance(wait_run_end(stack, run_id(trigger, "support-refunds")), RunCompleted)


def test_a_broken_policy_file_denies_everything_until_fixed(stack: Stack) -> None:
    broken = stack.policies_dir / "broken.cedar"
    started = time.time()
    broken.write_text("permit (principal, action, resource) when { ;")
    try:
        invalid = _reloaded(stack, started, lambda e: not e.valid)
        assert invalid.error
        trigger = stack.publish("support.refund_requested", {"order_id": "P-2001", "amount": 20})
        end = wait_run_end(stack, run_id(trigger, "support-refunds"))
        assert isinstance(end, RunFailed)
        assert "policy set invalid" in end.reason
    finally:
        fixed = time.time()
        broken.unlink()
    _reloaded(stack, fixed, lambda e: e.valid)


def test_tail_follows_new_events(stack: Stack) -> None:
    with subprocess.Popen(
        # From the beginning: a slow start of the CLI cannot miss the run, which it must still
        # follow as it happens (it is published after the tail started).
        [sys.executable, "-m", "charter", "tail", "runs", "--from-beginning"],
        stdout=subprocess.PIPE,
        text=True,
        env=stack.env,
    ) as tail:
        try:
            trigger = stack.publish("support.refund_requested", {"order_id": "P-3001", "amount": 20})
            run = run_id(trigger, "support-refunds")
            assert tail.stdout is not None
            seen = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = tail.stdout.readline()
                seen.append(line)
                if run[:8] in line and "RunCompleted" in line:
                    break
            assert any(run[:8] in line and "RunStarted" in line for line in seen), seen
            assert any(run[:8] in line and "RunCompleted" in line for line in seen), seen
        finally:
            tail.terminate()
            tail.wait(10)
