"""One record through a service: decode, trace, handle, publish; or dead-letter with the reason.

Cross-cutting concerns live here, wrapped around every service's handler, so handlers only
decide. Bad input never stops a partition: it goes to `<topic>.dlq` and the next record runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from charter import metrics, serde, telemetry
from charter.bus import Bus
from charter.clock import Clock, derive_id
from charter.consumer import Delivery
from charter.errors import InvalidMessage, RetryPolicy
from charter.events import DeadLettered, Event

log = logging.getLogger(__name__)

Handler = Callable[[Event, Delivery], Awaitable[Sequence[Event]]]
Decoded = Event | InvalidMessage


@dataclass(frozen=True)
class Prepared:
    """A record's outputs, decided but not yet sent, with the trace context to send them in."""

    outputs: Sequence[Event]
    context: otel_context.Context


def decode_all(deliveries: Sequence[Delivery]) -> list[Decoded]:
    """Each record's event, or why it is not one: decoded once for a batch, for a service that
    looks at the whole batch before its records are handled."""
    decoded: list[Decoded] = []
    for delivery in deliveries:
        try:
            decoded.append(serde.decode(delivery.value))
        except InvalidMessage as exc:
            decoded.append(exc)
    return decoded


class Pipeline:
    """`skip`, if given, names records the service has no use for, told from their headers
    alone: they are not decoded, traced or handled (their offsets are committed all the same)."""

    def __init__(
        self,
        service: str,
        bus: Bus,
        handler: Handler,
        clock: Clock,
        retry: RetryPolicy | None = None,
        *,
        skip: Callable[[Delivery], bool] | None = None,
    ) -> None:
        self.service = service
        self._bus = bus
        self._handler = handler
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self._tracer = telemetry.tracer(f"charter.{service}")
        self._skip = skip
        # The series every record touches, looked up once rather than once a record.
        self._seconds = metrics.record_seconds.labels(service)
        self._counted: dict[str, Any] = {}

    async def process_batch(self, deliveries: Sequence[Delivery]) -> None:
        await self.publish(await self.prepare_batch(deliveries))

    def wanted(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        return [d for d in deliveries if not self._skip(d)] if self._skip else list(deliveries)

    async def prepare_batch(
        self, deliveries: Sequence[Delivery], decoded: Sequence[Decoded] | None = None
    ) -> list[Prepared]:
        """Decide every record, in order; publish nothing yet. `decoded`: `deliveries` already
        decoded, in the same order."""
        if decoded is None:
            wanted = self.wanted(deliveries)
            pairs = list(zip(wanted, decode_all(wanted), strict=True))
        else:
            skip = self._skip
            pairs = [(d, e) for d, e in zip(deliveries, decoded, strict=True) if not (skip and skip(d))]
        return [await self.prepare(delivery, event) for delivery, event in pairs]

    async def publish(self, prepared: Sequence[Prepared]) -> None:
        """Send every output, each under the trace of the record that caused it, and wait until
        the broker has them all: only then may the caller commit the inputs' offsets."""
        pending: list[asyncio.Future[Any]] = []
        for item in prepared:
            token = otel_context.attach(item.context)
            try:
                pending.extend([await self._bus.send(out) for out in item.outputs])
            finally:
                otel_context.detach(token)
        await asyncio.gather(*pending)

    async def prepare(self, delivery: Delivery, decoded: Decoded | None = None) -> Prepared:
        if decoded is None:
            decoded = decode_all([delivery])[0]
        if isinstance(decoded, InvalidMessage):
            log.warning(
                "dead-lettering %s[%d]@%d: %s", delivery.topic, delivery.partition, delivery.offset, decoded
            )
            return Prepared([self.dead_letter(delivery, decoded, None)], otel_context.get_current())
        event = decoded
        env = event.envelope
        with (
            self._tracer.start_as_current_span(
                f"{self.service} {env.event_type}",
                context=telemetry.extract(delivery.headers),
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.destination.name": delivery.topic,
                    "charter.event_id": env.event_id,
                    "charter.run_id": env.run_id or "",
                    "charter.agent": env.agent or "",
                },
            ),
            telemetry.run_context(env.run_id),
            self._seconds.time(),
        ):
            counter = self._counted.get(env.event_type)
            if counter is None:
                counter = self._counted[env.event_type] = metrics.records.labels(self.service, env.event_type)
            counter.inc()
            return Prepared(await self._handle(event, delivery), otel_context.get_current())

    async def _handle(self, event: Event, delivery: Delivery) -> Sequence[Event]:
        attempt = 1
        while True:
            try:
                return await self._handler(event, delivery)
            except InvalidMessage as exc:
                log.warning("dead-lettering %s: %s", event.event_id, exc)
                return [self.dead_letter(delivery, exc, event)]
            except Exception as exc:
                if attempt >= self._retry.attempts:
                    log.exception("giving up on %s after %d attempts", event.event_id, attempt)
                    return [self.dead_letter(delivery, exc, event, attempts=attempt)]
                log.warning("attempt %d on %s failed, retrying: %r", attempt, event.event_id, exc)
                metrics.handler_retries.labels(self.service).inc()
                await asyncio.sleep(self._retry.delay(attempt))
                attempt += 1

    def dead_letter(
        self, delivery: Delivery, exc: Exception, event: Event | None, attempts: int = 1
    ) -> DeadLettered:
        metrics.dead_letters.labels(self.service, delivery.topic).inc()
        position = f"{delivery.topic}:{delivery.partition}:{delivery.offset}"
        reason = str(exc) if attempts == 1 else f"gave up after {attempts} attempts: {exc!r}"
        env = event.envelope if event else None
        return DeadLettered.create(
            event_id=derive_id(position, f"dlq:{self.service}"),
            now=self._clock.now(),
            tenant=env.tenant if env else self._bus.settings.tenant,
            agent=env.agent if env else None,
            run_id=env.run_id if env else None,
            correlation_id=env.correlation_id if env else position,
            causation_id=env.event_id if env else None,
            source_topic=delivery.topic,
            source_partition=delivery.partition,
            source_offset=delivery.offset,
            key=delivery.key,
            value=delivery.value,
            reason=reason,
            error_type=type(exc).__name__,
            service=self.service,
        )
