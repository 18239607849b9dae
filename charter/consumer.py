"""The consumer loop every aiokafka service runs: fetch a batch, handle it, then commit.

Offsets are committed only after the batch handler returns, that is after its effects are
durable and its outputs acknowledged by the broker (STYLE principle 7). A crash in between
redelivers the batch; handlers are idempotent, so that costs time, not correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata

from charter import broker, metrics
from charter.bus import Bus
from charter.config import Settings

log = logging.getLogger(__name__)

LAG_EVERY_S = 1.0


@dataclass(frozen=True)
class Delivery:
    """A record as it came off the broker, whichever client fetched it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    timestamp_ms: int


BatchHandler = Callable[[list[Delivery]], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_assigned: Callable[[], None]) -> None:
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked: %d", len(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self._on_assigned()


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
        on_assigned: Callable[[], None] = lambda: None,
        max_records: int = 500,
        fetch_max_wait_ms: int | None = None,
        pace_s: float = 0.0,
    ) -> None:
        self._settings = settings
        self._group_id = group_id
        self._topics = list(topics)
        self._handle_batch = handle_batch
        # With a transactional bus, outputs and input offsets commit together, or not at all.
        self._txn_bus = bus if bus is not None and bus.transactional else None
        self._on_assigned = on_assigned
        self._max_records = max_records
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._pace_s = pace_s
        self._service = service or group_id
        self._lag_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        kwargs = broker.consumer_kwargs(self._settings)
        if self._fetch_max_wait_ms is not None:
            kwargs["fetch_max_wait_ms"] = self._fetch_max_wait_ms
        consumer = AIOKafkaConsumer(group_id=self._group_id, client_id=self._group_id, **kwargs)
        consumer.subscribe(self._topics, listener=_Listener(self._on_assigned))
        await consumer.start()
        try:
            while not stop.is_set():
                began = time.monotonic()
                batch = await consumer.getmany(timeout_ms=100, max_records=self._max_records)
                if batch:
                    await self._process(consumer, batch)
                await self._measure_lag(consumer)
                if batch and sum(map(len, batch.values())) < self._max_records:
                    await self._paced(began, stop)
        finally:
            await consumer.stop()

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
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = await consumer.position(tp)
            metrics.consumer_lag.labels(self._service, tp.topic, str(tp.partition)).set(
                max(0, highwater - position)
            )

    async def _process(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        deliveries = [
            Delivery(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp)
            for records in batch.values()
            for r in records
        ]
        try:
            wrote = False
            if self._txn_bus is not None:
                async with self._txn_bus.transaction():
                    await self._handle_batch(deliveries)
                    wrote = self._txn_bus.sent_in_transaction > 0
                    if wrote:
                        next_offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                        await self._txn_bus.send_offsets(next_offsets, self._group_id)
            else:
                await self._handle_batch(deliveries)
            if not wrote:
                # Nothing was sent, so there is nothing the offsets must commit atomically with:
                # an empty transaction ends without a round trip, and a plain commit is one
                # request where a transactional one is three. (Kafka orders the two kinds of
                # offset commit by their position in the log, so neither overwrites a newer one.)
                offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batch.items()}
                await consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced mid-batch; the new owner redelivers and handlers dedupe.
            log.warning("commit failed after rebalance, batch will be redelivered: %s", exc)
