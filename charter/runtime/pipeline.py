"""One record through a service: decode, trace, handle, publish; or dead-letter with the reason.

Cross-cutting concerns live here, wrapped around every service's handler, so handlers only
decide. Bad input never stops a partition: it goes to `<topic>.dlq` and the next record runs.

A handler whose record must wait on the world outside (a model, a tool) returns a `Later`: the
rest of its work, run by the runtime apart from the batch. A failed attempt is retried the same
way, after its backoff, so a retry's wait holds up no other record.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from charter import metrics, serde, telemetry
from charter.bus import Bus
from charter.clock import Clock, derive_id
from charter.errors import InvalidEvent, InvalidMessage, RetryPolicy
from charter.events import DeadLettered, Event
from charter.runtime import letters
from charter.runtime.delivery import Delivery

log = logging.getLogger(__name__)


class Later:
    """The rest of a record's handling, which waits on the world outside: its outputs, or another
    `Later`. The runtime runs it apart from the record's batch."""

    __slots__ = ("rest",)

    def __init__(self, rest: Callable[[], Awaitable[Sequence[Event] | Later]]) -> None:
        self.rest = rest


Outcome = Sequence[Event] | Later
Handler = Callable[[Event, Delivery], Awaitable[Outcome]]
Decoded = Event | InvalidMessage


@dataclass(frozen=True)
class Prepared:
    """A record's outputs, decided but not yet sent, with the trace context to send them in;
    or, with `later`, the rest of its handling, which gives them."""

    outputs: Sequence[Event]
    context: otel_context.Context
    delivery: Delivery | None = None
    later: Callable[[], Awaitable[Prepared]] | None = None

    async def settled(self) -> Prepared:
        """This, with its `later` run to the end."""
        return self if self.later is None else await self.later()


def decode_all(deliveries: Sequence[Delivery]) -> list[Decoded]:
    """Each record's event, or why it is not one: decoded once for a batch, for a service that
    looks at the whole batch before its records are handled."""
    decoded: list[Decoded] = []
    for delivery in deliveries:
        try:
            decoded.append(_identified(serde.decode(delivery.value)))
        except InvalidMessage as exc:
            decoded.append(exc)
    return decoded


def _identified(event: Event) -> Event:
    # Every service's inbox knows an event by its id: a blank one would be taken for the first
    # blank-id event ever handled, and skipped as its duplicate, without a word.
    if not event.event_id.strip():
        env = event.envelope
        raise InvalidEvent(
            f"{env.event_type} with correlation id {env.correlation_id!r} has an empty event_id"
        )
    return event


async def settle(outcome: Outcome | Awaitable[Outcome]) -> Sequence[Event]:
    """An outcome's events, its `Later` run to the end (for a caller outside the runtime)."""
    if inspect.isawaitable(outcome):
        outcome = await outcome
    while isinstance(outcome, Later):
        outcome = await outcome.rest()
    return outcome


async def publish(bus: Bus, prepared: Sequence[Prepared]) -> None:
    """Send every output, each under the trace of the record that caused it, and wait until
    the broker has them all: only then may the caller commit the inputs' offsets."""
    pending: list[asyncio.Future[Any]] = []
    for item in prepared:
        token = otel_context.attach(item.context)
        try:
            pending.extend([await bus.send(out) for out in item.outputs])
        finally:
            otel_context.detach(token)
    await asyncio.gather(*pending)


class Pipeline:
    """`skip`, if given, names records the service has no use for, told from their headers
    alone: they are not decoded, traced or handled (their offsets are committed all the same).
    `inline`: a record's `Later` (a retry, say) is run before the next record is handled, as an
    ordered service needs; otherwise it is left to the runtime, to run beside the others."""

    def __init__(
        self,
        service: str,
        bus: Bus,
        handler: Handler,
        clock: Clock,
        retry: RetryPolicy | None = None,
        *,
        skip: Callable[[Delivery], bool] | None = None,
        inline: bool = True,
        trace_of: Callable[[Event], Sequence[tuple[str, bytes]]] | None = None,
    ) -> None:
        self._inline = inline
        # The trace a record's event belongs in, when its own headers may say another: a run's
        # events are handled in the run's trace, whatever record brought them (a timer's, a
        # business event's), so a run is one trace from its trigger to its end.
        self._trace_of = trace_of
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

    def wanted(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        return [d for d in deliveries if not self._skip(d)] if self._skip else list(deliveries)

    async def prepare_batch(
        self,
        deliveries: Sequence[Delivery],
        decoded: Sequence[Decoded] | None = None,
        *,
        handler: Handler | None = None,
    ) -> list[Prepared]:
        """Decide every record, in order; publish nothing yet. `decoded`: `deliveries` already
        decoded, in the same order. `handler`: the batch's own (one that works on what the batch
        has read), for the batch's first attempt at each record; a retry, which comes after the
        batch, is the service's handler's."""
        if decoded is None:
            wanted = self.wanted(deliveries)
            pairs = list(zip(wanted, decode_all(wanted), strict=True))
        else:
            skip = self._skip
            pairs = [(d, e) for d, e in zip(deliveries, decoded, strict=True) if not (skip and skip(d))]
        prepared = []
        for delivery, event in pairs:
            item = await self.prepare(delivery, event, handler=handler)
            prepared.append(await item.settled() if self._inline else item)
        return prepared

    async def publish(self, prepared: Sequence[Prepared]) -> None:
        await publish(self._bus, prepared)

    async def prepare(
        self, delivery: Delivery, decoded: Decoded | None = None, *, handler: Handler | None = None
    ) -> Prepared:
        if decoded is None:
            decoded = decode_all([delivery])[0]
        if isinstance(decoded, InvalidMessage):
            log.warning(
                "dead-lettering %s[%d]@%d: %s", delivery.topic, delivery.partition, delivery.offset, decoded
            )
            return Prepared([self.dead_letter(delivery, decoded, None)], otel_context.get_current(), delivery)
        event = decoded
        env = event.envelope
        parent, links = telemetry.extract(delivery.headers), []
        home = self._trace_of(event) if self._trace_of else ()
        if home and telemetry.trace_key(home) != telemetry.trace_key(delivery.headers):
            # The record's own trace is kept as a link: where it came from stays findable.
            came_from = trace.get_current_span(parent).get_span_context()
            links = [trace.Link(came_from)] if came_from.is_valid else []
            parent = telemetry.extract(home)
        with (
            self._tracer.start_as_current_span(
                f"{self.service} {env.event_type}",
                context=parent,
                links=links,
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
            first = handler or self._handler
            outcome = await self._attempt(event, delivery, lambda: first(event, delivery), 1)
            context = otel_context.get_current()
        if isinstance(outcome, Later):
            rest = outcome
            return Prepared((), context, delivery, lambda: self._finish(rest, event, context, delivery))
        return Prepared(outcome, context, delivery)

    async def _finish(
        self, later: Later, event: Event, context: otel_context.Context, delivery: Delivery
    ) -> Prepared:
        """Run a record's `Later` to its outputs, in the record's trace."""
        token = otel_context.attach(context)
        try:
            with telemetry.run_context(event.envelope.run_id):
                return Prepared(await settle(later), context, delivery)
        finally:
            otel_context.detach(token)

    async def _attempt(
        self, event: Event, delivery: Delivery, step: Callable[[], Awaitable[Outcome]], attempt: int
    ) -> Outcome:
        """One step of a record's handling. A failure is retried from the handler's start after
        its backoff, as a `Later`, so the wait holds up nothing else."""
        try:
            outcome = await step()
        except InvalidMessage as exc:
            log.warning("dead-lettering %s: %s", event.event_id, exc)
            return [self.dead_letter(delivery, exc, event)]
        except Exception as exc:
            if attempt >= self._retry.attempts:
                log.exception("giving up on %s after %d attempts", event.event_id, attempt)
                return [self.dead_letter(delivery, exc, event, attempts=attempt)]
            log.warning("attempt %d on %s failed, retrying: %r", attempt, event.event_id, exc)
            metrics.handler_retries.labels(self.service).inc()
            delay = self._retry.delay(attempt)

            async def again() -> Outcome:
                await asyncio.sleep(delay)
                return await self._attempt(
                    event, delivery, lambda: self._handler(event, delivery), attempt + 1
                )

            return Later(again)
        if isinstance(outcome, Later):
            rest = outcome.rest
            return Later(lambda: self._attempt(event, delivery, rest, attempt))
        return outcome

    def dead_letter(
        self, delivery: Delivery, exc: Exception, event: Event | None, attempts: int = 1
    ) -> DeadLettered:
        metrics.dead_letters.labels(self.service, delivery.topic).inc()
        position = f"{delivery.topic}:{delivery.partition}:{delivery.offset}"
        return letters.letter(
            self._bus.settings,
            event_id=derive_id(position, f"dlq:{self.service}"),
            now=self._clock.now(),
            delivery=delivery,
            event=event,
            reason=str(exc) if attempts == 1 else f"gave up after {attempts} attempts: {exc!r}",
            error_type=type(exc).__name__,
            service=self.service,
        )
