"""On Apache Kafka, Charter's producers are idempotent and its services write in transactions;
these tests ask the broker, and kill a producer mid-transaction, to prove it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from charter import serde, topics
from charter.client import Client
from charter.events import RunCompleted, TriggerReceived
from charter.runtime.service import group_id
from charter.stack.kafka import tool
from tests.e2e.conftest import Stack, run_id, wait_run_end
from tests.e2e.txn_writer import events

pytestmark = [pytest.mark.e2e, pytest.mark.needs("transactions")]


def _kafka_tool(stack: Stack, *args: str) -> str:
    return tool(
        "org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server", stack.settings.bootstrap(), *args
    )


def test_every_service_that_writes_has_a_transactional_id_on_the_broker(stack: Stack) -> None:
    trigger = stack.publish("support.refund_requested", {"order_id": "X-1001", "amount": 20})
    assert isinstance(wait_run_end(stack, run_id(trigger, "support-refunds")), RunCompleted)
    listed = _kafka_tool(stack, "list")
    for service in ("planner", "policy", "executor"):
        assert f"{group_id(stack.settings, service)}-" in listed, listed


def test_the_cli_publishes_with_an_idempotent_producer(stack: Stack) -> None:
    stack.publish("support.refund_requested", {"order_id": "X-1002", "amount": 20})
    triggers = topics.name(stack.settings, topics.Topic.TRIGGERS)
    ids = []
    for partition in range(stack.settings.partitions):
        out = _kafka_tool(stack, "describe-producers", "--topic", triggers, "--partition", str(partition))
        ids += [int(m) for m in re.findall(r"^(\d+)\s", out, re.MULTILINE)]
    # A producer id is assigned only to idempotent (or transactional) producers.
    assert ids, "no idempotent producer wrote to the triggers topic"


def _read(stack: Stack, isolation: str) -> list[str]:
    async def go() -> list[str]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.settings.bootstrap(), isolation_level=isolation, enable_auto_commit=False
        )
        await consumer.start()
        try:
            name = topics.name(stack.settings, topics.Topic.TRIGGERS)
            parts = [TopicPartition(name, p) for p in range(stack.settings.partitions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)  # for read_committed, the stable offset
            seen: list[str] = []
            empty = 0
            # To the end, not to the first empty poll (a slow first fetch comes back empty); a
            # partition whose last offset is a transaction marker may never report it, so five
            # empty polls in a row end the read too.
            while empty < 5 and [p for p in parts if await consumer.position(p) < ends[p]]:
                batch = await consumer.getmany(timeout_ms=1500)
                empty = 0 if batch else empty + 1
                seen += [r.key.decode() for records in batch.values() for r in records]
            return [k for k in seen if k.startswith("txn-")]
        finally:
            await consumer.stop()

    return asyncio.run(go())


def _replayed(stack: Stack) -> list[str]:
    async def go() -> list[str]:
        async with Client(stack.settings) as client:
            return [
                r.event.envelope.correlation_id
                async for r in client.replay("triggers")
                if r.event is not None and r.event.envelope.correlation_id.startswith("txn-")
            ]

    return asyncio.run(go())


def test_a_producer_killed_mid_transaction_leaves_no_duplicate(stack: Stack) -> None:
    env = {**os.environ, **stack.env, "PYTHONPATH": os.getcwd()}
    transactional_id = f"{stack.settings.topic_prefix}txn-test"
    with subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.txn_writer", transactional_id, "5", "hang"],
        stdout=subprocess.PIPE, text=True, env=env,
    ) as doomed:  # fmt: skip
        assert doomed.stdout is not None
        assert doomed.stdout.readline().strip() == "sent"
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    # The same transactional id again: it fences the dead producer, whose transaction aborts.
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.txn_writer", transactional_id, "5", "commit"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert "committed" in done.stdout
    expected = sorted(e.envelope.correlation_id for e in events(5))
    assert sorted(_read(stack, "read_committed")) == expected
    # The aborted writes are in the log all the same: only the transaction hides them.
    assert sorted(_read(stack, "read_uncommitted")) == sorted(expected * 2)
    # And Charter's own readers (replay, tail, the SDK) never show the aborted ones.
    assert sorted(_replayed(stack)) == expected


def test_a_subscription_from_a_time_sees_a_transaction_that_commits_meanwhile(stack: Stack) -> None:
    """Regression: a subscription `since` a time took its start from a time lookup that skips
    open transactions, then from ends read after that transaction had committed, and so began
    past the transaction's records. Here the transaction commits right after the first of the
    subscription's two lookups, whichever that is; the record must still arrive."""
    name = topics.name(stack.settings, topics.Topic.TRIGGERS)
    marker = TriggerReceived.create(
        event_id="race-1", now=datetime.now(UTC), tenant="t", correlation_id="race-1",
        name="race", data={}, source="test",
    )  # fmt: skip

    async def go() -> str | None:
        since = datetime.now(UTC) - timedelta(milliseconds=1)
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.settings.bootstrap(),
            transactional_id=f"{stack.settings.topic_prefix}race",
        )
        await producer.start()
        await producer.begin_transaction()
        await (await producer.send(name, serde.encode(marker), key=b"race-1"))
        originals = {m: getattr(AIOKafkaConsumer, m) for m in ("end_offsets", "offsets_for_times")}
        pending = [True]

        def commit_after(method: str) -> Any:
            async def wrapper(consumer: AIOKafkaConsumer, *args: Any) -> Any:
                result = await originals[method](consumer, *args)
                if pending:
                    pending.clear()
                    await producer.commit_transaction()
                return result

            return wrapper

        try:
            for method in originals:
                setattr(AIOKafkaConsumer, method, commit_after(method))
            async with (
                Client(stack.settings) as client,
                aclosing(client.subscribe("triggers", since=since)) as sub,
            ):
                received = await asyncio.wait_for(anext(sub), 10)
        finally:
            for method, original in originals.items():
                setattr(AIOKafkaConsumer, method, original)
            await producer.stop()
        return received.event.event_id if received.event else None

    assert asyncio.run(go()) == "race-1"


def _left_unread(stack: Stack, service: str, topic_names: list[str]) -> int:
    """Records a service's group has yet to commit past, read as its own consumer would."""

    async def go() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.bootstrap())
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.settings.bootstrap(),
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group_id(stack.settings, service))
            parts = [TopicPartition(t, p) for t in topic_names for p in range(stack.settings.partitions)]
            consumer.assign(parts)
            for tp in parts:
                if tp in committed:
                    consumer.seek(tp, committed[tp].offset)
                else:
                    await consumer.seek_to_beginning(tp)
            left = 0
            while batch := await consumer.getmany(timeout_ms=1000):
                left += sum(len(records) for records in batch.values())
            return left
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(go())


def test_batches_that_send_nothing_still_commit_their_offsets(stack: Stack) -> None:
    """The policy service reads back its own allowed decisions (only human approvals need it)
    and sends nothing for them: such batches commit their offsets outside a transaction, between
    batches that commit theirs inside one. Neither kind may overwrite the other: once the run is
    over, the group has nothing left to read."""
    trigger = stack.publish("support.refund_requested", {"order_id": "X-1003", "amount": 20})
    assert isinstance(wait_run_end(stack, run_id(trigger, "support-refunds")), RunCompleted)
    read = (topics.Topic.ACTIONS_PROPOSED, topics.Topic.ACTIONS_APPROVED)
    names = [topics.name(stack.settings, t) for t in read]
    deadline = time.monotonic() + 30
    while (left := _left_unread(stack, "policy", names)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == 0
