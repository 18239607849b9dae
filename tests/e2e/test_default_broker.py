"""The broker `charter up` starts when none is named keeps its data: a restart of the stack can
replay the earlier session's runs from their topics and find the audit heads it published, and a
head signed when the log went quiet is published with no record after it. Tansu, asked for by
name, says its limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from charter.events import RunCompleted
from charter.store import make_engine
from services.audit import store as audit_store
from tests.e2e.conftest import Stack, run_id, stack_env, wait_run_end

pytestmark = pytest.mark.e2e


def _default(home: Path) -> Stack:
    env = stack_env(home, CHARTER_AUDIT_CHECKPOINT_SECONDS="1")
    del env["CHARTER_BROKER"]  # what a user gets who names none
    stack = Stack(home, env)
    stack.wait_ready(120)
    return stack


def _replayed(stack: Stack, *args: str) -> list[dict[str, object]]:
    out = stack.cli("replay", *args, "--json", timeout=120).stdout
    return [json.loads(line)["event"] for line in out.splitlines() if line.strip()]


def _heads(stack: Stack) -> list[int]:
    events = _replayed(stack, "--topic", "audit.checkpoints", "--from-beginning")
    return [int(e["size"]) for e in events]  # type: ignore[call-overload]


def _audit_size(stack: Stack) -> int:
    engine = make_engine(stack.settings.database_url_for("audit"))
    try:
        with engine.connect() as conn:
            return audit_store.size(conn)
    finally:
        engine.dispose()


@pytest.mark.kafka  # the default wherever Java 17 runs, as it does here and in CI
def test_a_restarted_stack_replays_the_earlier_sessions_runs_and_finds_its_heads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _default(home)
    try:
        assert "Apache Kafka (KRaft, local) on 127.0.0.1:" in first.text()
        trigger = first.publish("support.refund_requested", {"order_id": "R-7001", "amount": 20})
        run = run_id(trigger, "support-refunds")
        assert isinstance(wait_run_end(first, run, timeout=60), RunCompleted)
        # The log goes quiet; a head covering all of it is signed and published all the same.
        deadline = time.monotonic() + 60
        while True:
            size = _audit_size(first)
            if size in _heads(first) and size == _audit_size(first):
                break
            assert time.monotonic() < deadline, (size, _heads(first))
            time.sleep(1)
        published = _heads(first)
    finally:
        first.stop(60)

    second = _default(home)
    try:
        # The earlier session's records, read back from the broker, not from a store.
        events = _replayed(second, "--run", run)
        types = [e["envelope"]["event_type"] for e in events]  # type: ignore[index]
        assert {"RunStarted", "ActionProposed", "ActionApproved", "RunCompleted"} <= set(types)
        assert types.count("ActionExecuted") == 3  # lookup, refund, notify
        assert set(published) <= set(_heads(second))
    finally:
        second.stop(60)


@pytest.mark.tansu
def test_tansu_named_says_its_limits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    stack = Stack(home, stack_env(home), "--broker", "tansu")
    try:
        stack.wait_ready(60)
        assert "embedded broker (Tansu)" in stack.text()
        assert "keeps topics in memory only" in stack.text()
        assert "never deletes a record" in stack.text()
    finally:
        stack.stop()
