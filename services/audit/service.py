"""The audit service's adapter: every topic, DLQs included, appended in batches.

It reads raw records rather than going through the pipeline: a record that does not decode
is still evidence, so it is kept byte for byte (as `Undecodable`) instead of dead-lettered.
A batch is one database transaction; offsets are committed only after it commits.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from charter import serde, store, telemetry, topics
from charter.bus import Bus
from charter.config import Settings
from charter.consumer import Delivery
from charter.errors import InvalidMessage, RetryPolicy
from charter.killswitch import ControlFollower, SwitchStore
from charter.service import Parts
from services.audit import store as audit

log = logging.getLogger(__name__)
NAME = "audit"
UNDECODABLE = "Undecodable"


def entry_of(delivery: Delivery) -> audit.Entry:
    where = dict(
        topic=delivery.topic, partition=delivery.partition, offset=delivery.offset, value=delivery.value
    )
    try:
        event = serde.decode(delivery.value)
    except InvalidMessage:
        position = f"{delivery.topic}:{delivery.partition}:{delivery.offset}"
        return audit.Entry(
            event_id=f"undecodable:{position}",
            event_type=UNDECODABLE,
            run_id=None,
            agent=None,
            tenant=None,
            occurred_at=None,
            **where,  # type: ignore[arg-type]
        )
    env = event.envelope
    return audit.Entry(
        event_id=env.event_id,
        event_type=env.event_type,
        run_id=env.run_id,
        agent=env.agent,
        tenant=env.tenant,
        occurred_at=env.occurred_at,
        **where,  # type: ignore[arg-type]
    )


class Auditor:
    def __init__(self, engine: Engine, retry: RetryPolicy | None = None) -> None:
        self._engine = engine
        self._retry = retry or RetryPolicy(attempts=10)
        self._tracer = telemetry.tracer("charter.audit")

    async def handle_batch(self, deliveries: list[Delivery]) -> None:
        entries = [entry_of(d) for d in deliveries]
        with self._tracer.start_as_current_span(
            "audit append", attributes={"charter.batch_size": len(entries)}
        ):
            for attempt in range(1, self._retry.attempts + 1):
                try:
                    with self._engine.begin() as conn:
                        added = audit.append(conn, entries, time.time_ns() // 1000)
                    log.debug("appended %d of %d", added, len(entries))
                    return
                except (OperationalError, IntegrityError) as exc:
                    # A locked database or a concurrent appender: retry; never skip evidence.
                    if attempt == self._retry.attempts:
                        raise
                    log.warning("append attempt %d failed, retrying: %s", attempt, exc)
                    await asyncio.sleep(self._retry.delay(attempt))


async def build(settings: Settings, bus: Bus) -> Parts:
    engine = store.make_engine(settings.database_url_for(NAME))
    audit.create(engine)
    return Parts(
        topics=topics.all_names(settings),
        handle_batch=Auditor(engine).handle_batch,
        close=engine.dispose,
        transactional=False,
        control=ControlFollower(
            settings, NAME, bus=bus, engine=engine, store=SwitchStore(engine, audit.switches)
        ),
    )
