"""Publishing events: routing to topics, keys, headers, and the producer that sends them.

Every event is keyed by its run id (so a run's events stay in order on one partition), or by
its correlation id before a run exists. Dead letters keep the key of the record they carry.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from charter import broker, serde, telemetry, topics
from charter.config import Settings
from charter.events import DeadLettered, Event

log = logging.getLogger(__name__)
# Every record names the client and host that produced it, for the audit's "where".
ORIGIN_HEADER = "charter-origin"
TENANT_HEADER = "charter-tenant"
# A record put back on a topic (a dead letter, a replay) names where it was read from.
REPLAYED_FROM = "charter-replayed-from"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    # Sent as a header, so a consumer shares its slots fairly across tenants without decoding.
    tenant: str | None = None


def route(settings: Settings, event: Event) -> Outgoing:
    if isinstance(event, DeadLettered):
        return Outgoing(
            topics.dlq_name(event.source_topic), event.key, serde.encode(event), event.envelope.tenant
        )
    topic = topics.name(settings, topics.TOPIC_OF[type(event)])
    key = event.envelope.run_id or event.envelope.correlation_id
    return Outgoing(topic, key.encode(), serde.encode(event), event.envelope.tenant)


class Bus:
    """One producer per process. `send` enqueues and returns the delivery future.

    Given a transactional id (on a broker that has transactions), every send happens inside a
    transaction: the consumer loop's, which also commits the input offsets, or one of its own
    for a lone `publish`. A lock keeps the two from interleaving on the one producer.
    """

    def __init__(self, settings: Settings, client_id: str, transactional_id: str | None = None) -> None:
        self.settings = settings
        self._client_id = client_id
        self._transactional_id = transactional_id if broker.capabilities(settings).transactions else None
        self._producer: AIOKafkaProducer | None = None
        self._txn_lock = asyncio.Lock()
        self._in_txn = False
        self._sent_in_txn = 0
        self._origin = (ORIGIN_HEADER, f"{client_id}@{socket.gethostname()}".encode())

    @property
    def origin(self) -> tuple[str, bytes]:
        """The origin header this bus puts on every record it sends."""
        return self._origin

    @property
    def transactional(self) -> bool:
        return self._transactional_id is not None

    async def start(self) -> None:
        # aiokafka binds a producer to the running loop, so it is made here, not in __init__.
        extra = {"transactional_id": self._transactional_id} if self._transactional_id else {}
        if self._transactional_id:
            broker.tune_transactions()
        self._producer = AIOKafkaProducer(
            client_id=self._client_id, **broker.producer_kwargs(self.settings), **extra
        )
        await self._producer.start()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A transaction on a transactional bus; on any other, nothing."""
        if self._producer is None or not self.transactional:
            yield
            return
        async with self._txn_lock, self._producer.transaction():
            self._in_txn = True
            self._sent_in_txn = 0
            try:
                yield
            finally:
                self._in_txn = False

    @property
    def sent_in_transaction(self) -> int:
        """How many records the open transaction has sent so far."""
        return self._sent_in_txn

    async def send_offsets(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata], group_id: str
    ) -> None:
        """Commit consumed offsets as part of the open transaction."""
        if self._producer is None or not self._in_txn:
            raise RuntimeError("send_offsets outside a transaction")
        await self._producer.send_offsets_to_transaction(offsets, group_id)

    @property
    def running(self) -> bool:
        return self._producer is not None

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, event: Event) -> asyncio.Future[Any]:
        return await self.send_record(route(self.settings, event))

    async def send_record(
        self, out: Outgoing, headers: Sequence[tuple[str, bytes]] = (), *, as_is: bool = False
    ) -> asyncio.Future[Any]:
        """Send bytes as they are (an event already routed, or a record being put back), with
        the trace context, the origin and any extra headers; `as_is`: with `headers` only (a
        replayed record keeps the headers it had)."""
        if self._producer is None:
            raise RuntimeError("Bus.send before Bus.start")
        if self._in_txn:
            self._sent_in_txn += 1
        if not as_is:
            headers = [*telemetry.inject(), self._origin, *self._tenant(out), *headers]
        future: asyncio.Future[Any] = await self._producer.send(
            out.topic, out.value, key=out.key, headers=list(headers)
        )
        return future

    @staticmethod
    def _tenant(out: Outgoing) -> list[tuple[str, bytes]]:
        return [(TENANT_HEADER, out.tenant.encode())] if out.tenant else []

    async def publish(self, *events: Event) -> None:
        """Send and wait until the broker has them all (committed together, on a transactional
        bus)."""
        if not events:
            return
        if self.transactional and not self._in_txn:
            async with self.transaction():
                await asyncio.gather(*[await self.send(event) for event in events])
            return
        await asyncio.gather(*[await self.send(event) for event in events])
