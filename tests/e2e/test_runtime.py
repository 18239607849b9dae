"""The runtime on a real broker, in this process: records of different keys are handled side by
side and one key's in order, and a partition's commit lets its next owner skip what was done.

The handler here is the test's own (no Charter service), so what is proven is the consumer
loop's: concurrency by a barrier that only fills with many keys in hand at once, order by the
records each key was handled in, and offsets by what the group has committed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from opentelemetry import context as otel_context

from charter.config import Settings
from charter.runtime import consumer as runtime_consumer
from charter.runtime.consumer import ConsumerLoop, Mode
from charter.runtime.delivery import Delivery
from charter.runtime.offsets import done_offsets
from charter.runtime.pipeline import Prepared
from charter.stack.embedded import EmbeddedBroker
from charter.stack.kafka import LocalKafka

pytestmark = pytest.mark.e2e

KEYS = 8
PER_KEY = 10
BARRIER_TIMEOUT_S = 30


@pytest.fixture
def settings(broker: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A bare broker of the kind, and settings for a topic and group of this test's own."""
    prefix = f"rt.{uuid.uuid4().hex[:8]}."
    if broker == "kafka":
        kafka: LocalKafka = request.getfixturevalue("kafka")
        yield Settings(bootstrap_servers=kafka.bootstrap, broker="kafka", topic_prefix=prefix)
        return
    embedded = EmbeddedBroker(tmp_path / "broker.log")
    embedded.start()
    try:
        yield Settings(bootstrap_servers=embedded.bootstrap, broker="tansu", topic_prefix=prefix)
    finally:
        embedded.stop()


async def _produce(
    settings: Settings, topic: str, partitions: int, records: Sequence[tuple[bytes, bytes]]
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap(), acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def _loop(
    settings: Settings, topic: str, handle: Callable[[list[Delivery]], Sequence[Prepared]]
) -> ConsumerLoop:
    async def batch(deliveries: list[Delivery]) -> Sequence[Prepared]:
        return handle(deliveries)

    return ConsumerLoop(
        settings,
        group_id=f"{settings.topic_prefix}group",
        topics=[topic],
        handle_batch=batch,
        mode=Mode.KEYED,
        max_in_flight=1000,
    )


async def _until(
    done: Callable[[], bool],
    stop: asyncio.Event,
    running: asyncio.Task[None],
    within_s: float,
    linger: float = 0.0,
) -> None:
    """Wait for `done` (or the loop failing), and `linger` more, then stop the loop."""
    try:
        async with asyncio.timeout(within_s):
            while not done():
                if running.done():
                    running.result()
                    raise AssertionError("the consumer loop stopped by itself")
                await asyncio.sleep(0.05)
        await asyncio.sleep(linger)  # room for a record that should not come, to come after all
    finally:
        stop.set()
        await running


async def _committed(
    settings: Settings, group: str, topic: str, partitions: int
) -> dict[int, tuple[int, str]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        found = await consumer._coordinator.fetch_committed_offsets(tps)
        return {tp.partition: (meta.offset, meta.metadata) for tp, meta in found.items()}
    finally:
        await consumer.stop()


def test_keys_are_handled_side_by_side_and_each_key_in_order(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}in"
    records = [(f"key-{k}".encode(), f"{k}:{i}".encode()) for i in range(PER_KEY) for k in range(KEYS)]
    seen: dict[str, list[int]] = {}
    in_hand: set[str] = set()
    overlaps: list[str] = []

    async def go() -> None:
        await _produce(settings, topic, 3, records)
        # Every record's work waits until a record of every key is in hand: with fewer keys at
        # once than KEYS (records handled one after another), the barrier breaks.
        barrier = asyncio.Barrier(KEYS)

        def handle(deliveries: list[Delivery]) -> list[Prepared]:
            return [Prepared((), otel_context.get_current(), d, _later(d)) for d in deliveries]

        def _later(d: Delivery) -> Callable[[], asyncio.Future[Prepared]]:
            async def work() -> Prepared:
                key, index = d.value.decode().split(":")
                if key in in_hand:
                    overlaps.append(key)
                in_hand.add(key)
                async with asyncio.timeout(BARRIER_TIMEOUT_S):
                    await barrier.wait()
                seen.setdefault(key, []).append(int(index))
                in_hand.discard(key)
                return Prepared((), otel_context.get_current(), d)

            return lambda: asyncio.ensure_future(work())

        stop = asyncio.Event()
        running = asyncio.create_task(_loop(settings, topic, handle).run(stop))
        await _until(lambda: sum(map(len, seen.values())) == len(records), stop, running, 90)

    asyncio.run(go())
    assert overlaps == []  # never two records of one key in hand at once
    assert seen == {str(k): list(range(PER_KEY)) for k in range(KEYS)}  # each key in order
    committed = asyncio.run(_committed(settings, f"{settings.topic_prefix}group", topic, 3))
    assert sum(offset for offset, _ in committed.values()) == len(records)  # all of it, no more


def test_a_record_still_in_hand_holds_the_commit_and_its_neighbours_are_not_handled_twice(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Kafka. Tansu keeps no commit metadata (it answers an empty string), so there the next
    owner handles the finished records above the commit again, as any redelivery: the services'
    inboxes and idempotency keys absorb it."""
    topic = f"{settings.topic_prefix}in"
    records = [(f"key-{i}".encode(), str(i).encode()) for i in range(10)]
    group = f"{settings.topic_prefix}group"
    monkeypatch.setattr(runtime_consumer, "DRAIN_S", 0.5)  # the stuck record is given up at stop

    async def first_owner() -> list[int]:
        await _produce(settings, topic, 1, records)
        done: list[int] = []
        never = asyncio.Event()

        def handle(deliveries: list[Delivery]) -> list[Prepared]:
            out = []
            for d in deliveries:
                if d.offset == 3:  # waits on the world outside, and never hears back

                    async def stuck(d: Delivery = d) -> Prepared:
                        await never.wait()
                        return Prepared((), otel_context.get_current(), d)

                    out.append(Prepared((), otel_context.get_current(), d, stuck))
                else:
                    done.append(d.offset)
                    out.append(Prepared((), otel_context.get_current(), d))
            return out

        stop = asyncio.Event()
        running = asyncio.create_task(_loop(settings, topic, handle).run(stop))
        await _until(lambda: len(done) == 9, stop, running, 60)
        return done

    async def next_owner(expected: int) -> list[int]:
        handled: list[int] = []

        def handle(deliveries: list[Delivery]) -> list[Prepared]:
            handled.extend(d.offset for d in deliveries)
            return [Prepared((), otel_context.get_current(), d) for d in deliveries]

        stop = asyncio.Event()
        running = asyncio.create_task(_loop(settings, topic, handle).run(stop))
        await _until(lambda: len(handled) >= expected, stop, running, 60, linger=0.5)
        return handled

    assert sorted(asyncio.run(first_owner())) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    [(offset, metadata)] = asyncio.run(_committed(settings, group, topic, 1)).values()
    assert offset == 3  # the lowest record not finished
    kept = settings.broker_kind == "kafka"
    assert done_offsets(offset, metadata) == ({4, 5, 6, 7, 8, 9} if kept else set())
    # The next owner starts at 3 and is handed only 3: the rest were finished before.
    again = [3] if kept else list(range(3, 10))
    assert asyncio.run(next_owner(len(again))) == again
    assert asyncio.run(_committed(settings, group, topic, 1))[0] == (10, "")
