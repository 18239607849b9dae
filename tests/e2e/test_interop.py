"""Charter's topics read by a program that knows nothing of Charter but its .avsc files: a Java
consumer built with Maven against Apache Avro and the Kafka Java client (tests/interop)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from charter import topics
from charter.cli import exits
from charter.client import Client
from charter.events import (
    EVENT_TYPES,
    ActionProposed,
    ApprovalRequested,
    DeadLettered,
    RunCompleted,
    RunFailed,
    RunHandedOff,
    ToolUnavailable,
)
from tests.conftest import REPO
from tests.e2e.conftest import (
    Stack,
    produce_nameless,
    produce_raw,
    run_id,
    wait_approval,
    wait_for,
    wait_pending,
    wait_run_end,
)
from tests.e2e.test_approvals import DEADLINE, policy

pytestmark = pytest.mark.e2e
PROJECT = REPO / "tests" / "interop"
REFUNDS = "support-refunds"


@pytest.fixture(scope="session")
def java_reader() -> list[str]:
    """The command that runs the Java reader, built once per session."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        pytest.fail("Java 17 and Maven are required for the interop test")
    built = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(PROJECT / "pom.xml"), "package"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    classpath = f"{PROJECT / 'target' / 'read-events-1.jar'}:{PROJECT / 'target' / 'libs'}/*"
    return ["java", "-Xmx256m", "-cp", classpath, "dev.charter.interop.ReadEvents"]


def _every_event_type(stack: Stack) -> None:
    """Drive the stack until it has written one event of every type."""
    small = stack.publish("support.refund_requested", {"order_id": "J-1001", "amount": 20})
    approved = stack.publish("support.refund_requested", {"order_id": "J-1002", "amount": 700})
    rejected = stack.publish("support.refund_requested", {"order_id": "J-1003", "amount": 800})
    failing = stack.publish("support.refund_requested", {"order_id": "Z-1004", "amount": 20})
    first = wait_approval(stack, run_id(approved, REFUNDS)).approval_id
    stack.as_user("dana", "approvals", "approve", first, "--set", "amount=650")  # ApprovalAmended
    assert (
        stack.as_user("dana", "approvals", "approve", first, check=False).returncode == exits.REFUSED
    )  # ...Refused
    amended = wait_for(
        stack,
        lambda e: (
            isinstance(e, ApprovalRequested)
            and e.run_id == run_id(approved, REFUNDS)
            and e.amended_by is not None
        ),
        "approvals.requested",
    )
    assert isinstance(amended, ApprovalRequested)
    stack.as_user("lee", "approvals", "approve", wait_pending(stack, amended).approval_id)
    stack.as_user("dana", "approvals", "reject", wait_approval(stack, run_id(rejected, REFUNDS)).approval_id)
    with policy(stack, "deadline.cedar", DEADLINE):  # ApprovalExpired
        expired = stack.publish("support.refund_requested", {"order_id": "J-1005", "amount": 1313})
        wait_run_end(stack, run_id(expired, REFUNDS))
    # The expired approval escalated its run; an operator cancels it: RunInstructed. The API
    # reads the run's status from the audit, which may not have recorded the escalation yet.
    deadline = time.monotonic() + 30
    while stack.as_user("omar", "run", "cancel", run_id(expired, REFUNDS), check=False).returncode != 0:
        assert time.monotonic() < deadline, "the escalated run could not be cancelled"
        time.sleep(0.5)
    # A kill switch on an agent whose run waits: KillSwitchSet, its acknowledgements, RunCancelled.
    held = stack.publish("support.refund_requested", {"order_id": "J-1006", "amount": 950})
    waiting = run_id(held, REFUNDS)
    wait_approval(stack, waiting)
    stack.cli("kill-switch", "on", "--agent", REFUNDS, "--reason", "interop")
    try:
        wait_run_end(stack, waiting)
    finally:
        stack.cli("kill-switch", "off", "--agent", REFUNDS, "--reason", "interop done")
    for trigger in (small, approved, rejected, failing):
        assert isinstance(wait_run_end(stack, run_id(trigger, REFUNDS)), RunCompleted | RunFailed)
    # ToolUnavailable needs a tool whose circuit is open, and the shared stack's demo tools never
    # fail that way (test_executor_guarantees opens one on its own stack); the same encoder the
    # executor uses writes one here, caused by a real proposal.
    small_run = run_id(small, REFUNDS)
    proposal = wait_for(
        stack, lambda e: isinstance(e, ActionProposed) and e.run_id == small_run, "actions.proposed"
    )
    assert isinstance(proposal, ActionProposed)
    unavailable = ToolUnavailable.caused_by(
        proposal,
        now=proposal.envelope.occurred_at,
        action=proposal.action,
        idempotency_key=f"{proposal.run_id}:interop",
        failures=5,
        retry_after_s=30.0,
        reason="circuit open (interop)",
    )

    async def send() -> None:
        async with Client(stack.settings) as client:
            await client.send(unavailable)

    asyncio.run(send())
    # A handoff to a run that waits for an event that never comes: RunHandedOff, RunWaiting,
    # and the planner's WaitExpired.
    handing = stack.publish("test.handoff", {"order_id": "J-1007", "quick": True})
    handed = wait_for(
        stack,
        lambda e: isinstance(e, RunHandedOff) and e.run_id == run_id(handing, "handoff-tester"),
        "triggers",
    )
    wait_run_end(stack, run_id(handed.event_id, "quick-waiter"))
    produce_raw(stack, b"not avro at all", b"interop-garbage")
    wait_for(stack, lambda e: isinstance(e, DeadLettered) and e.key == b"interop-garbage", "triggers.dlq")
    # A well-formed record that breaks the envelope's rules: both Charter and the reader name it.
    produce_nameless(stack, "interop-nameless")
    wait_for(stack, lambda e: isinstance(e, DeadLettered) and e.key == b"interop-nameless", "triggers.dlq")


Position = tuple[str, int, int]


def _python_view(stack: Stack) -> tuple[set[tuple[str, int, int, str]], set[Position], set[Position]]:
    """What Python decodes, what it cannot, and the records Charter dead-lettered (by position)."""

    async def go() -> tuple[set[tuple[str, int, int, str]], set[Position], set[Position]]:
        decoded: set[tuple[str, int, int, str]] = set()
        garbage: set[Position] = set()
        lettered: set[Position] = set()
        async with Client(stack.settings) as client:
            for name in topics.all_names(stack.settings):
                async for r in client.replay(name):
                    if r.event is None:
                        garbage.add((r.topic, r.partition, r.offset))
                        continue
                    decoded.add((r.topic, r.partition, r.offset, r.event.event_id))
                    if isinstance(r.event, DeadLettered):
                        e = r.event
                        lettered.add((e.source_topic, e.source_partition, e.source_offset))
        return decoded, garbage, lettered

    return asyncio.run(go())


def test_a_java_consumer_decodes_every_event_type_from_the_avsc_files_alone(
    stack: Stack, java_reader: list[str]
) -> None:
    _every_event_type(stack)
    result = subprocess.run(
        [*java_reader, stack.settings.bootstrap(), str(REPO / "schemas"), *topics.all_names(stack.settings)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    summary = lines[-1]
    assert set(EVENT_TYPES) <= set(summary["summary"]), (
        f"missing: {set(EVENT_TYPES) - set(summary['summary'])}"
    )
    records = lines[:-1]
    java_decoded = {
        (r["topic"], r["partition"], r["offset"], r["event_id"]) for r in records if "event_id" in r
    }
    java_garbage = {(r["topic"], r["partition"], r["offset"]) for r in records if "error" in r}
    python_decoded, python_garbage, lettered = _python_view(stack)
    # Records breaking the envelope's rules are there on purpose (this test's nameless trigger,
    # and other tests' bad input); each is one Charter dead-lettered, none slipped through.
    broken = {(r["topic"], r["partition"], r["offset"]): r["problem"] for r in records if "problem" in r}
    assert summary["problems"] == len(broken) > 0
    assert set(broken) <= lettered, {p: why for p, why in broken.items() if p not in lettered}
    # The audit keeps signing heads while the records settle: what it published after the Java
    # reader finished is not a disagreement.
    heads = topics.name(stack.settings, topics.Topic.AUDIT_CHECKPOINTS)
    seen = {(t, p): o for t, p, o, _ in sorted(java_decoded) if t == heads}
    python_decoded = {r for r in python_decoded if r[0] != heads or r[2] <= seen.get((r[0], r[1]), -1)}
    # Record for record, the two readers agree on what the topics hold.
    assert java_decoded == python_decoded
    assert java_garbage == python_garbage
    assert java_garbage, "the garbage record should have been seen by both"


def test_the_reader_names_what_it_cannot_decode(java_reader: list[str], tmp_path: Path) -> None:
    """The Java side's own check: an empty schemas folder is an error, not a silent pass."""
    result = subprocess.run(
        [*java_reader, "127.0.0.1:1", str(tmp_path), "t"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "no .avsc files" in result.stderr
