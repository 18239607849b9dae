"""Publishing events: routing to topics, keys, headers, and the producer that sends them.

Every event is keyed by its run id (so a run's events stay in order on one partition), or by
its correlation id before a run exists. Dead letters keep the key of the record they carry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from charter import broker, serde, telemetry, topics
from charter.config import Settings
from charter.events import DeadLettered, Event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


def route(settings: Settings, event: Event) -> Outgoing:
    if isinstance(event, DeadLettered):
        return Outgoing(topics.dlq_name(event.source_topic), event.key, serde.encode(event))
    topic = topics.name(settings, topics.TOPIC_OF[type(event)])
    key = event.envelope.run_id or event.envelope.correlation_id
    return Outgoing(topic, key.encode(), serde.encode(event))


class Bus:
    """One producer per process. `send` enqueues and returns the delivery future."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # aiokafka binds a producer to the running loop, so it is made here, not in __init__.
        self._producer = AIOKafkaProducer(client_id=self._client_id, **broker.producer_kwargs(self.settings))
        await self._producer.start()

    @property
    def running(self) -> bool:
        return self._producer is not None

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, event: Event) -> asyncio.Future[Any]:
        if self._producer is None:
            raise RuntimeError("Bus.send before Bus.start")
        out = route(self.settings, event)
        future: asyncio.Future[Any] = await self._producer.send(
            out.topic, out.value, key=out.key, headers=telemetry.inject()
        )
        return future

    async def publish(self, event: Event) -> None:
        """Send and wait until the broker has it."""
        await (await self.send(event))
