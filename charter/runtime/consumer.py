"""The loop every service consumes with: fetch, hand records to the service, publish, commit.

Records are handled in one of two ways, as the service declares (`Mode`):
- `ordered`: a batch at a time, in the order fetched; the next batch once this one's outputs
  are on the broker and its offsets committed.
- `keyed`: records of different keys side by side, one key's in order (`keys.KeyQueues`). A
  batch takes the next record of every key not in hand; a record whose handler left work for
  `Later` (a model call, a tool call, a retry's backoff) finishes on its own, and the key's next
  record waits for it while every other key goes on.

Either way a record is finished once its outputs are acknowledged by the broker, and a
partition's offset is committed up to its lowest record not yet finished (`offsets`), after
the effect (STYLE principle 7): a crash redelivers what was not finished, and handlers are
idempotent. Where the broker has transactions, a finished record's outputs and the offsets
commit in one transaction; records finishing meanwhile are committed together (group commit).
At most `max_in_flight` records are fetched and not finished; then fetching pauses until some
finish (backpressure by pausing, never by sleeping). A keyed service fetches `read_ahead` more,
queued and not in hand: the slots in hand are shared fairly across tenants (`keys.KeyQueues`),
so a tenant's flood queues there while another tenant's records take the next free slot.

A partition taken away by a rebalance is forgotten at once: its queued records are dropped and
the outputs of its records still in hand are never published, so nothing is committed for a
partition another consumer now owns (aiokafka's transactional offset commit cannot be fenced
by the group's generation, so this loop must not try).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata

from charter import broker, metrics
from charter.bus import Bus
from charter.config import Settings
from charter.runtime.delivery import Delivery
from charter.runtime.keys import KeyQueues
from charter.runtime.offsets import PartitionOffsets, done_offsets
from charter.runtime.pipeline import Prepared, publish

log = logging.getLogger(__name__)

LAG_EVERY_S = 1.0
# How long a stopping consumer lets the records in hand finish before it gives them up.
DRAIN_S = 5.0
# Offsets a consumer commits outside a transaction wait this long for others to join them: a
# commit a finished record would be hundreds a second, each a request the broker answers. (A
# crash redelivers what finished in that time; handlers are idempotent.)
COMMIT_EVERY_S = 0.1


class Mode(enum.StrEnum):
    ORDERED = "ordered"
    KEYED = "keyed"


BatchHandler = Callable[[list[Delivery]], Awaitable[Sequence[Prepared]]]
_Position = tuple[str, int, int]


def _position(d: Delivery) -> _Position:
    return (d.topic, d.partition, d.offset)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked: %d", len(revoked))
        await self._loop.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self._loop.on_assigned()


class ConsumerLoop:
    def __init__(
        self,
        settings: Settings,
        *,
        service: str = "",
        group_id: str,
        topics: Sequence[str],
        handle_batch: BatchHandler,
        bus: Bus | None = None,
        transactional: bool = True,
        mode: Mode = Mode.ORDERED,
        max_in_flight: int | None = None,
        on_assigned: Callable[[], None] = lambda: None,
        max_records: int = 500,
        fetch_max_wait_ms: int | None = None,
        pace_s: float = 0.0,
    ) -> None:
        self._settings = settings
        self._group_id = group_id
        self._topics = list(topics)
        self._handle_batch = handle_batch
        self._bus = bus
        # With a transactional bus, outputs and input offsets commit together, or not at all.
        self._txn_bus = bus if bus is not None and transactional and bus.transactional else None
        self._mode = mode
        self._max_in_flight = max_in_flight or settings.max_in_flight
        # Fetched and not finished, at most: what is in hand and what queues for a slot.
        self._max_fetched = self._max_in_flight + (settings.read_ahead if mode is Mode.KEYED else 0)
        self.on_assigned = on_assigned
        self._max_records = max_records
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._pace_s = pace_s
        self._service = service or group_id
        self._lag_at = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        # Each partition's offsets, from its first fetch since it was assigned.
        self._tracks: dict[TopicPartition, PartitionOffsets] = {}
        # The partition offsets each record in hand was fetched under (a revoked partition's
        # records are then known by their offsets' being another object, or none).
        self._fetched_by: dict[_Position, PartitionOffsets] = {}
        self._keys = KeyQueues()
        self._fifo: deque[Delivery] = deque()
        self._in_flight = 0  # fetched, not yet finished (queued or in hand)
        self._finished: list[tuple[Delivery, Prepared | None]] = []
        self._commit_lock = asyncio.Lock()
        # Offsets to commit outside a transaction, gathered until COMMIT_EVERY_S has passed.
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._committed_at = 0.0
        self._batch_running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._stopping = False
        self._gauge = metrics.records_in_flight.labels(self._service)

    async def run(self, stop: asyncio.Event) -> None:
        kwargs = broker.consumer_kwargs(self._settings)
        if self._fetch_max_wait_ms is not None:
            kwargs["fetch_max_wait_ms"] = self._fetch_max_wait_ms
        consumer = AIOKafkaConsumer(group_id=self._group_id, client_id=self._group_id, **kwargs)
        consumer.subscribe(self._topics, listener=_Listener(self))
        await consumer.start()
        self._consumer = consumer
        try:
            while not stop.is_set():
                if self._failure is not None:
                    raise self._failure
                began = time.monotonic()
                self._flow(consumer)
                room = max(1, min(self._max_records, self._max_fetched - self._in_flight))
                batch = await consumer.getmany(timeout_ms=100, max_records=room)
                if batch:
                    await self._accept(consumer, batch)
                    self._dispatch()
                await self._measure_lag(consumer)
                if self._uncommitted:  # offsets that no finished record has committed since
                    async with self._commit_lock:
                        await self._commit_offsets()
                if batch and sum(map(len, batch.values())) < self._max_records:
                    await self._paced(began, stop)
            await self._drain(consumer)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await consumer.stop()

    # Fetching.

    def _flow(self, consumer: AIOKafkaConsumer) -> None:
        """Pause fetching while as many records are fetched and not finished as may be; resume
        once there is room."""
        assigned = consumer.assignment()
        if self._in_flight >= self._max_fetched:
            consumer.pause(*assigned)
        elif consumer.paused():
            consumer.resume(*consumer.paused())

    async def _accept(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            track = self._tracks.get(tp)
            if track is None:
                track = self._tracks[tp] = await self._offsets_of(consumer, tp, records[0].offset)
            for r in records:
                if not track.fetched(r.offset):
                    continue  # finished before, under the partition's previous owner
                d = Delivery(
                    r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp
                )
                self._fetched_by[_position(d)] = track
                self._in_flight += 1
                if self._mode is Mode.KEYED:
                    self._keys.push(d)
                else:
                    self._fifo.append(d)
        self._gauge.set(self._in_flight)

    async def _offsets_of(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, first: int
    ) -> PartitionOffsets:
        """The partition's offsets as its last commit left them: where it stood, and the records
        above that its metadata names as finished."""
        # aiokafka's public `committed()` drops the metadata; its coordinator keeps it.
        committed = (await consumer._coordinator.fetch_committed_offsets([tp])).get(tp)
        if committed is None or committed.offset < 0:
            return PartitionOffsets(first)
        skip = done_offsets(committed.offset, committed.metadata)
        if skip:
            log.info(
                "%s[%d]: %d records above offset %d finished before; not handled again",
                tp.topic,
                tp.partition,
                len(skip),
                committed.offset,
            )
        return PartitionOffsets(committed.offset, skip)

    # Handling.

    def _dispatch(self) -> None:
        """Start the next batch, if none is being handled and records are waiting."""
        if self._batch_running or self._stopping or self._failure is not None:
            return
        if self._mode is Mode.KEYED:
            slots = self._max_in_flight - self._keys.in_hand.total()
            records = self._keys.take_heads(min(self._max_records, slots))
        else:
            records = [self._fifo.popleft() for _ in range(min(len(self._fifo), self._max_records))]
        if records:
            self._batch_running = True
            self._spawn(self._run_batch(records))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            # A handler that raises past the pipeline is a bug or a broker failure: the process
            # stops (the supervisor restarts it) and what was not committed comes again.
            self._failure = task.exception()

    async def _run_batch(self, records: list[Delivery]) -> None:
        keyed = self._mode is Mode.KEYED
        try:
            prepared = {_position(p.delivery): p for p in await self._handle_batch(records) if p.delivery}
            for d in records:
                item = prepared.get(_position(d))
                if item is not None and item.later is not None:
                    if keyed:
                        self._spawn(self._run_later(d, item))
                        continue
                    item = await item.settled()  # an ordered service waits, in order
                self._finished.append((d, item))
        finally:
            if keyed:
                self._batch_running = False
        if keyed:
            # The next batch need not wait for this one's outputs to reach the broker.
            self._dispatch()
        try:
            await self._commit()
        finally:
            if not keyed:
                self._batch_running = False
        self._dispatch()

    async def _run_later(self, delivery: Delivery, prepared: Prepared) -> None:
        # Settled first: `self._finished` is another list once a commit has taken the last one.
        settled = await prepared.settled()
        self._finished.append((delivery, settled))
        await self._commit()
        self._dispatch()

    # Committing.

    async def _commit(self) -> None:
        """Publish what has finished and commit the offsets it allows, all that finished by the
        time the lock is had: one transaction (or one send and one commit) for all of it."""
        async with self._commit_lock:
            items, self._finished = self._finished, []
            if not items:
                return
            touched: dict[TopicPartition, PartitionOffsets] = {}
            sending: list[Prepared] = []
            for d, prepared in items:
                track = self._fetched_by.pop(_position(d), None)
                tp = TopicPartition(d.topic, d.partition)
                if track is None or self._tracks.get(tp) is not track:
                    continue  # its partition was revoked: the new owner handles it again
                track.finished(d.offset)
                touched[tp] = track
                if prepared is not None and prepared.outputs:
                    sending.append(prepared)
            try:
                await self._send_and_commit(sending, touched)
            finally:
                for d, _ in items:
                    if self._mode is Mode.KEYED:
                        self._keys.release(d)
                self._in_flight -= len(items)
                self._gauge.set(self._in_flight)

    async def _send_and_commit(
        self, sending: list[Prepared], touched: dict[TopicPartition, PartitionOffsets]
    ) -> None:
        offsets = {tp: OffsetAndMetadata(t.committable(), t.metadata()) for tp, t in touched.items()}
        if self._txn_bus is not None and sending:
            async with self._txn_bus.transaction():
                await publish(self._txn_bus, sending)
                await self._txn_bus.send_offsets(offsets, self._group_id)
            for tp in offsets:
                self._uncommitted.pop(tp, None)  # newer, and committed
            return
        if sending:
            if self._bus is None:
                raise RuntimeError(f"{self._service} has outputs to send and no bus")
            await publish(self._bus, sending)
        # Nothing was sent in a transaction, so there is nothing the offsets must commit
        # atomically with: they go with a plain commit (one request where a transactional one
        # is three), soon. (Kafka orders the two kinds of offset commit by their position in
        # the log, so neither overwrites a newer one.)
        self._uncommitted.update(offsets)
        await self._commit_offsets()

    async def _commit_offsets(self, *, now: bool = False, only: set[TopicPartition] | None = None) -> None:
        """Commit the offsets gathered, once COMMIT_EVERY_S has passed since the last commit (or
        `now`); `only` those partitions' (a revoked partition's, before it is handed over)."""
        if not self._uncommitted or self._consumer is None:
            return
        if not now and time.monotonic() - self._committed_at < COMMIT_EVERY_S:
            return
        offsets = {tp: o for tp, o in self._uncommitted.items() if only is None or tp in only}
        for tp in offsets:
            del self._uncommitted[tp]
        self._committed_at = time.monotonic()
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced meanwhile; the new owner redelivers and handlers dedupe.
            log.warning("commit failed after a rebalance, records will be redelivered: %s", exc)

    async def forget(self, revoked: set[TopicPartition]) -> None:
        """Partitions taken away: drop their queued records; nothing more is committed for them.
        Waits for a commit under way, so none straddles the handover."""
        async with self._commit_lock:
            await self._commit_offsets(now=True, only=revoked)
            for tp in revoked:
                self._tracks.pop(tp, None)
            gone = {(tp.topic, tp.partition) for tp in revoked}

            def unwanted(d: Delivery) -> bool:
                return (d.topic, d.partition) in gone

            dropped = [d for d in self._fifo if unwanted(d)] + self._keys.drop(unwanted)
            self._fifo = deque(d for d in self._fifo if not unwanted(d))
            for d in dropped:
                self._fetched_by.pop(_position(d), None)
            count = len(dropped)
            self._in_flight -= count
            self._gauge.set(self._in_flight)

    async def _drain(self, consumer: AIOKafkaConsumer) -> None:
        """On stop: take nothing new, let what is in hand finish for a while, commit it."""
        self._stopping = True
        consumer.pause(*consumer.assignment())
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=DRAIN_S)
        await self._commit()
        async with self._commit_lock:
            await self._commit_offsets(now=True)

    # Pacing and lag.

    async def _paced(self, began: float, stop: asyncio.Event) -> None:
        """A consumer that is keeping up and need not hurry (`pace_s`, a sink's) takes its next
        batch no sooner than `pace_s` after the last. Meanwhile its fetcher holds at most one
        fetch of each partition, so the broker answers a few large fetches rather than many
        small ones; on Tansu, which lists every batch a partition holds to answer a fetch that
        finds data, that is most of what a sink costs the broker."""
        rest = self._pace_s - (time.monotonic() - began)
        if rest > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rest)

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Records on the broker this consumer has not reached: the last fetch's high watermark
        less its position. Both are known locally, so this asks the broker nothing."""
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        if self._mode is Mode.KEYED:
            for tenant in self._keys.in_hand.keys() | self._keys.waiting.keys():
                for state, counts in (("in_hand", self._keys.in_hand), ("queued", self._keys.waiting)):
                    metrics.tenant_records.labels(self._service, tenant or "-", state).set(counts[tenant])
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = await consumer.position(tp)
            metrics.consumer_lag.labels(self._service, tp.topic, str(tp.partition)).set(
                max(0, highwater - position)
            )
