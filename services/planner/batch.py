"""A batch of records the planner handles in one database transaction.

A transaction a record cost the planner more than deciding the record. So a batch (what faust
hands over at once) is one transaction: the inbox is read once for all its records, each
record's run states are written as it is decided, and the records are entered in the inbox
together when the batch ends, with the commit; only then may their outputs be sent.

Two things end a batch's transaction early. A model call: the transaction is committed before
the model is asked, so no lock is held while it thinks. A failure inside the transaction (a
record's handling, or the commit): the transaction is rolled back at once, the batch's pass
stops there, and the batch is handled again from its first record, a record at a time and a
transaction each, as without batching, so its records take effect in their order. Records
whose effects were committed before (ahead of a model call) are found in the inbox and
answered with the outputs recorded, so nothing is decided twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
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
class _Batch:
    conn: Connection
    # What the inbox held for the batch's records when it began, and what it has recorded since.
    recorded: dict[str, list[Event]]
    # Records decided since the last commit, entered in the inbox with the next one.
    pending: dict[str, tuple[Event, list[Event]]] = field(default_factory=dict)
    broken: bool = False


# The batch the running task handles, if any. A context variable, not an attribute: the kill
# switch follower calls the planner from its own task, in transactions of its own.
_CURRENT: ContextVar[_Batch | None] = ContextVar("planner_batch", default=None)


class _Redo(BaseException):
    """Ends a batch's first pass at its first failure. A BaseException, so that the pipeline,
    which retries and dead-letters Exceptions, lets it pass: a record retried there would be
    decided before the records ahead of it in the batch, whose effects were just rolled back."""


def _open() -> _Batch | None:
    batch = _CURRENT.get()
    return batch if batch is not None and not batch.broken else None


def _break(batch: _Batch) -> None:
    """Roll back at once: no lock is held while the failure is dealt with."""
    batch.conn.rollback()
    batch.pending.clear()
    batch.broken = True


class Batches:
    def __init__(self, engine: Engine, clock: Clock, observe: Observe) -> None:
        self._engine = engine
        self._clock = clock
        self._observe = observe  # a recorded record's figures, once its batch has committed

    async def run(self, decoded: Sequence[Decoded], work: Callable[[], Awaitable[T]]) -> T:
        """`work` handles the batch whose records are `decoded`; its result once committed."""
        with self._engine.connect() as conn:
            ids = [e.event_id for e in decoded if isinstance(e, Event)]
            batch = _Batch(conn, runs.inbox.outputs_of_many(conn, ids))
            token = _CURRENT.set(batch)
            try:
                result = await work()
                self._commit(batch)
                return result
            except _Redo as redo:
                log.warning("handling a batch again a record at a time: %r", redo.__cause__)
            finally:
                _CURRENT.reset(token)
        return await work()

    def commit(self) -> None:
        """Commit the open batch so far (before a model call)."""
        batch = _open()
        if batch is not None:
            self._commit(batch)

    def _commit(self, batch: _Batch) -> None:
        try:
            runs.inbox.record_many(batch.conn, list(batch.pending.values()), self._clock.now())
            batch.conn.commit()
        except Exception as exc:
            # Say another replica recorded one of these events first: handled again one at a
            # time, each finds what the inbox holds now.
            _break(batch)
            raise _Redo from exc
        for event, outputs in batch.pending.values():
            batch.recorded[event.event_id] = outputs
            self._observe(event, outputs)
        batch.pending.clear()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """The batch's connection in a batch (committed when it ends), else a transaction."""
        batch = _open()
        if batch is None:
            with self._engine.begin() as conn:
                yield conn
            return
        try:
            yield batch.conn
        except Exception as exc:
            _break(batch)
            raise _Redo from exc
        except BaseException:
            _break(batch)
            raise

    def done(self, conn: Connection, event: Event, *, fresh: bool = False) -> list[Event] | None:
        """The outputs recorded for `event`, if it was handled before. `fresh`: ask the store,
        not what the batch read when it began (another replica may have handled it since)."""
        batch = _open()
        pending = batch.pending.get(event.event_id) if batch is not None else None
        if pending is not None:
            return pending[1]
        if batch is None or fresh:
            return runs.inbox.outputs_of(conn, event.event_id)
        return batch.recorded.get(event.event_id)

    def record(self, conn: Connection, event: Event, outputs: list[Event], now: datetime) -> None:
        """Enter `event` in the inbox with its outputs: with the batch's commit, or now."""
        batch = _open()
        if batch is not None:
            batch.pending[event.event_id] = (event, outputs)
            return
        runs.inbox.record(conn, event, outputs, now)
        self._observe(event, outputs)
