"""A batch of records the planner handles in one database transaction.

A transaction a record cost the planner more than deciding the record. So a batch (what the
runtime hands over at once) is one transaction: the inbox is read once for all its records,
each record's run states are written as it is decided, and the records are entered in the inbox
together when the batch ends, with the commit; only then may their outputs be sent.

The batch is passed to the handler of its first pass (`Batches.run`): a record handled outside
a batch (a model's answer, a retry, a kill switch) has a transaction of its own. A failure
inside the batch's transaction (a record's handling, or the commit) rolls it back at once and
breaks the batch: the rest of its pass decides nothing, and the batch is handled again from its
first record, a record at a time and a transaction each, so its records take effect in their
order, and a record that fails again is retried or dead-lettered by the pipeline as any other.
Records whose effects were committed before are found in the inbox and answered with the
outputs recorded, so nothing is decided twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, Engine

from charter.clock import Clock
from charter.events import Event
from charter.runtime.pipeline import Decoded
from services.planner import store as runs

log = logging.getLogger(__name__)
T = TypeVar("T")
Observe = Callable[[Event, list[Event]], None]


@dataclass
class Batch:
    conn: Connection
    # What the inbox held for the batch's records when it began, and what it has recorded since.
    recorded: dict[str, list[Event]]
    # Records decided since the last commit, entered in the inbox with the next one.
    pending: dict[str, tuple[Event, list[Event]]] = field(default_factory=dict)
    broken: BaseException | None = None

    def break_off(self, cause: BaseException) -> None:
        """Roll back at once: no lock is held while the failure is dealt with."""
        self.conn.rollback()
        self.pending.clear()
        self.broken = cause


class Batches:
    def __init__(self, engine: Engine, clock: Clock, observe: Observe) -> None:
        self._engine = engine
        self._clock = clock
        self._observe = observe  # a recorded record's figures, once its batch has committed

    async def run(self, decoded: Sequence[Decoded], work: Callable[[Batch | None], Awaitable[T]]) -> T:
        """`work(batch)` handles the batch whose records are `decoded`; its result once committed.
        If the batch broke, `work(None)` handles them again, a record at a time."""
        with self._engine.connect() as conn:
            ids = [e.event_id for e in decoded if isinstance(e, Event)]
            batch = Batch(conn, runs.inbox.outputs_of_many(conn, ids))
            result = await work(batch)
            if batch.broken is None:
                self._commit(batch)
            if batch.broken is None:
                return result
        log.warning("handling a batch again a record at a time: %r", batch.broken)
        return await work(None)

    def _commit(self, batch: Batch) -> None:
        try:
            runs.inbox.record_many(batch.conn, list(batch.pending.values()), self._clock.now())
            batch.conn.commit()
        except Exception as exc:
            # Say another replica recorded one of these events first: handled again one at a
            # time, each finds what the inbox holds now.
            batch.break_off(exc)
            return
        for event, outputs in batch.pending.values():
            batch.recorded[event.event_id] = outputs
            self._observe(event, outputs)
        batch.pending.clear()

    @contextmanager
    def begin(self, batch: Batch | None) -> Iterator[Connection]:
        """The batch's connection (committed when the batch ends), else a transaction of its own.
        A failure inside the batch's breaks it, and is raised on."""
        if batch is None:
            with self._engine.begin() as conn:
                yield conn
            return
        try:
            yield batch.conn
        except BaseException as exc:
            batch.break_off(exc)
            raise

    def done(self, conn: Connection, event: Event, batch: Batch | None) -> list[Event] | None:
        """The outputs recorded for `event`, if it was handled before: by this batch, or as the
        batch found the inbox when it began; with no batch, as the inbox holds now."""
        if batch is None:
            return runs.inbox.outputs_of(conn, event.event_id)
        pending = batch.pending.get(event.event_id)
        return pending[1] if pending is not None else batch.recorded.get(event.event_id)

    def record(
        self, conn: Connection, event: Event, outputs: list[Event], now: datetime, batch: Batch | None
    ) -> None:
        """Enter `event` in the inbox with its outputs: with the batch's commit, or now."""
        if batch is not None:
            batch.pending[event.event_id] = (event, outputs)
            return
        runs.inbox.record(conn, event, outputs, now)
        self._observe(event, outputs)
