"""The Python SDK: publish business events, decide approvals, follow and replay Charter's topics.

    async with Client() as charter:
        trigger = await charter.publish("support.refund_requested", {"order_id": "A-1", "amount": 40})
        async for received in charter.subscribe("runs", since=trigger.envelope.occurred_at):
            print(received.event)

With no arguments it talks to the stack `charter up` runs (or CHARTER_BOOTSTRAP_SERVERS).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from charter import broker, serde, telemetry, topics
from charter.bus import Bus, Outgoing
from charter.clock import SystemClock, new_id
from charter.config import Settings
from charter.errors import InvalidMessage, NotFound
from charter.events import Event, TriggerReceived

# How long a read waits for more records before deciding it has reached the end. Needed because
# Tansu under-reports end offsets (BROKER.md): "past the reported end" is not proof of "at the end".
_QUIET_MS = 400


@dataclass(frozen=True)
class Received:
    """A record read from a topic: the event, or why it could not be decoded."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    event: Event | None
    error: str | None = None
    value: bytes = b""  # the record's bytes as they are, for putting it back on a topic

    @property
    def trace_id(self) -> str | None:
        return telemetry.trace_id_of(self.headers)


class Client:
    def __init__(self, settings: Settings | None = None, *, source: str = "sdk") -> None:
        self.settings = settings or Settings()
        self._source = source
        self._bus: Bus | None = None
        self._clock = SystemClock()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.stop()
            self._bus = None

    async def _producer(self) -> Bus:
        if self._bus is None:
            bus = Bus(self.settings, client_id=f"charter-{self._source}")
            await bus.start()
            self._bus = bus
        return self._bus

    async def send(self, event: Event) -> None:
        """Publish any Charter event to its topic, and wait until the broker has it."""
        bus = await self._producer()
        with telemetry.tracer("charter.client").start_as_current_span(f"publish {event.envelope.event_type}"):
            await bus.publish(event)

    async def send_record(
        self, out: Outgoing, headers: Sequence[tuple[str, bytes]] = (), *, as_is: bool = False
    ) -> Any:
        """Publish a record's bytes as they are (a dead letter's original, say), and wait until
        the broker has it; returns where it landed (topic, partition, offset). `as_is`: with
        `headers` only, not this client's trace context and origin."""
        bus = await self._producer()
        with telemetry.tracer("charter.client").start_as_current_span(f"publish to {out.topic}"):
            return await (await bus.send_record(out, headers, as_is=as_is))

    async def publish(
        self,
        name: str,
        data: dict[str, Any],
        *,
        correlation_id: str | None = None,
        submitted_by: str | None = None,
        tenant: str | None = None,
    ) -> TriggerReceived:
        """Publish a business event that may start agent runs."""
        event_id = new_id()
        trigger = TriggerReceived.create(
            event_id=event_id,
            now=self._clock.now(),
            tenant=tenant or self.settings.tenant,
            correlation_id=correlation_id or event_id,
            name=name,
            data=data,
            source=self._source,
            submitted_by=submitted_by,
        )
        await self.send(trigger)
        return trigger

    async def subscribe(
        self, *names: str, since: datetime | None = None, other_topics: bool = False
    ) -> AsyncGenerator[Received, None]:
        """Follow topics (`runs`, `actions.results`, ...; all when none given) from `since`
        (default: now), forever. Commits nothing and joins no group. `other_topics`: names
        outside the contract (a replay's sandbox) are read as they are."""
        start = since or datetime.now(UTC)
        async with self._reader(names, other_topics) as (consumer, parts):
            await _seek_to_time(consumer, parts, start)
            floor_ms = int(start.timestamp() * 1000)
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        if r.timestamp >= floor_ms:
                            yield _received(r)

    async def replay(
        self,
        *names: str,
        from_offset: int | None = None,
        from_time: datetime | None = None,
        run_id: str | None = None,
        until: datetime | None = None,
        to_offset: int | None = None,
        other_topics: bool = False,
    ) -> AsyncGenerator[Received, None]:
        """The records of some topics from an offset, a time, or the beginning, up to their end,
        or up to a time (`until`, exclusive) or an offset (`to_offset`, inclusive).
        `other_topics`: names outside the contract are read as they are."""
        window = _Window(
            int(from_time.timestamp() * 1000) if from_time else None,
            int(until.timestamp() * 1000) if until else None,
            to_offset,
            run_id,
        )
        async with self._reader(list(names), other_topics) as (consumer, parts):
            if from_time is not None:
                await _seek_to_time(consumer, parts, from_time)
            elif from_offset is not None:
                for tp in parts:
                    consumer.seek(tp, from_offset)
            else:
                await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            while True:
                batch = await consumer.getmany(timeout_ms=_QUIET_MS)
                for records in batch.values():
                    for r in records:
                        item = _received(r)
                        if window.admits(item):
                            yield item
                if not batch and all(await _positions(consumer, parts, ends)):
                    return

    def _reader(self, names: Sequence[str], other: bool = False) -> _Reader:
        full = [topics.resolve(self.settings, n, other=other) for n in names] or topics.all_names(
            self.settings
        )
        return _Reader(self.settings, full)


@dataclass(frozen=True)
class _Window:
    """Which records a replay yields: a time range, an offset bound, one run."""

    from_ms: int | None
    until_ms: int | None
    to_offset: int | None
    run_id: str | None

    def admits(self, item: Received) -> bool:
        if self.from_ms is not None and item.timestamp_ms < self.from_ms:
            return False
        if self.until_ms is not None and item.timestamp_ms >= self.until_ms:
            return False
        if self.to_offset is not None and item.offset > self.to_offset:
            return False
        return self.run_id is None or (item.event is not None and item.event.run_id == self.run_id)


class _Reader:
    """A group-less consumer assigned every partition of some topics."""

    def __init__(self, settings: Settings, names: list[str]) -> None:
        self._settings = settings
        self._names = names
        self._consumer: AIOKafkaConsumer | None = None

    async def _partitions(self) -> list[TopicPartition]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._settings.bootstrap())
        await admin.start()
        try:
            # Listed before described: Tansu makes any topic a client describes, a typo included.
            existing = set(await admin.list_topics())
            missing = [name for name in self._names if name not in existing]
            if missing:
                raise NotFound(
                    f"topic {missing[0]} does not exist on {self._settings.bootstrap()}; "
                    f"the contract's: {topics.known(self._settings)}"
                )
            described = {d["topic"]: d for d in await admin.describe_topics(self._names)}
        finally:
            await admin.close()
        parts = []
        for name in self._names:
            found = described.get(name)
            if found is None or found.get("error_code") or not found["partitions"]:
                raise NotFound(f"topic {name} has no partitions on {self._settings.bootstrap()}")
            parts += [
                TopicPartition(name, p["partition"])
                for p in sorted(found["partitions"], key=lambda p: p["partition"])
            ]
        return parts

    async def __aenter__(self) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
        parts = await self._partitions()
        # The services' own settings, read_committed on Kafka included: a reader must never show
        # an event whose transaction aborted.
        consumer = AIOKafkaConsumer(**broker.consumer_kwargs(self._settings))
        await consumer.start()
        self._consumer = consumer
        consumer.assign(parts)
        return consumer, parts

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


def _received(record: Any) -> Received:
    event: Event | None = None
    error: str | None = None
    try:
        event = serde.decode(record.value)
    except InvalidMessage as exc:
        error = str(exc)
    headers = tuple(record.headers or ())
    return Received(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.timestamp,
        headers,
        event,
        error,
        record.value,
    )


async def _seek_to_time(consumer: AIOKafkaConsumer, parts: list[TopicPartition], at: datetime) -> None:
    # The ends first: a read_committed time lookup skips a transaction still open, and that
    # transaction may commit before the ends are asked for, moving them past its records. Taken
    # first, the ends are at or before anything the lookup could not see.
    ends = await consumer.end_offsets(parts)
    found = await consumer.offsets_for_times({tp: int(at.timestamp() * 1000) for tp in parts})
    for tp in parts:
        hit = found.get(tp)
        # No record at or after `at` yet: start from the end. Callers also filter by timestamp,
        # since Tansu reports ends that can be early.
        consumer.seek(tp, hit.offset if hit is not None and hit.offset >= 0 else ends[tp])


async def _positions(
    consumer: AIOKafkaConsumer, parts: list[TopicPartition], ends: dict[TopicPartition, int]
) -> list[bool]:
    return [await consumer.position(tp) >= ends[tp] for tp in parts]
