"""The audit service's adapter: every topic, DLQs included, appended in batches, heads signed.

It reads raw records rather than going through the pipeline: a record that does not decode
is still evidence, so it is kept byte for byte (as `Undecodable`) instead of dead-lettered.

Group commit: a batch the consumer hands over (up to its fetch size) is one database
transaction, with its leaves, any personal fields sealed, and a signed tree head when one is due
(every CHARTER_AUDIT_CHECKPOINT_EVERY records, or CHARTER_AUDIT_CHECKPOINT_SECONDS after the
last). Offsets are committed only after that transaction commits. Heads are then published to
`audit.checkpoints`; one not yet published (a crash in between, or another replica publishing at
that moment) is published on the next pass, or by the timer within the checkpoint interval even
when no record comes. Replicas share the log: one signs, and one publishes, at a time
(services/audit/heads.py), so the heads published only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from charter import metrics, serde, signing, store, telemetry, topics
from charter.bus import Bus
from charter.clock import Clock, SystemClock
from charter.config import Settings
from charter.errors import InvalidMessage, RetryPolicy
from charter.events import Event
from charter.killswitch import ControlFollower, SwitchStore
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Prepared
from charter.runtime.service import Parts
from services.audit import checkpoint, decide, heads
from services.audit import store as audit
from services.audit.attribute import attribute
from services.audit.merkle import Frontier, Tree
from services.audit.personal import Sealer

log = logging.getLogger(__name__)
NAME = "audit"


def _decode(delivery: Delivery) -> Event | None:
    try:
        return serde.decode(delivery.value)
    except InvalidMessage:
        return None


class Auditor:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        signer: signing.Signer,
        bus: Bus | None = None,
        retry: RetryPolicy | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock or SystemClock()
        self._cadence = decide.Cadence(settings.audit_checkpoint_every, settings.audit_checkpoint_seconds)
        self._signer = signer
        self._bus = bus
        self._retry = retry or RetryPolicy(attempts=10)
        self._appended_types: list[str] = []
        self._sealer = Sealer.of(settings)
        self._tracer = telemetry.tracer("charter.audit")
        self._conn: Connection | None = None
        self._tree = Tree.over(self._current)
        self._last: audit.Head | None = None
        self._loaded = False
        self._unpublished = True  # heads may wait to be published (from before a restart, say)
        self._publishing = False  # a publish is under way in this process
        self._refused: str | None = None  # why heads are no longer signed, if they are not
        # The tree as committed; a transaction works on a copy, adopted once it commits.
        self._frontier: Frontier | None = None
        self._pending_frontier: Frontier | None = None

    def _current(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the tree is read inside a transaction only")
        return self._conn

    def _pending(self, conn: Connection, delivery: Delivery, now_us: int) -> audit.Pending:
        event = _decode(delivery)
        named = event is not None and self._sealer.concerns(event, delivery.value)
        sealed, subject = self._sealer.seal(conn, event, now_us) if event and named else (None, None)
        return audit.Pending(attribute(delivery, event, now_us, subject), sealed or delivery.value)

    async def handle_batch(self, deliveries: list[Delivery]) -> list[Prepared]:
        """Append the batch; the audit sends nothing for it (its tree heads go out on their own)."""
        started = time.time_ns()
        with metrics.audit_append_seconds.time():
            await self._retrying(lambda conn, now_us: self._append(conn, deliveries, now_us))
        self._observe(deliveries, started, time.time_ns())
        try:
            await self.publish()
        except Exception:
            # The batch is committed; its offsets may be too. The head stays marked unpublished
            # and the next pass (or the signing loop) publishes it.
            log.exception("publishing the audit's tree heads failed; they are published on the next pass")
        return []

    def _observe(self, deliveries: list[Delivery], started_ns: int, ended_ns: int) -> None:
        """A span per trace the batch's records came in, so each run's trace shows its events
        reaching the audit log; they share the batch's times, as they share its commit. (One a
        trace, not one a record: a span costs more than appending the record it would mark.)"""
        metrics.audit_appends.inc(len(deliveries))
        for event_type in self._appended_types:
            metrics.records.labels(NAME, event_type).inc()
        traces: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            if delivery.topic.endswith(topics.DLQ_SUFFIX):
                metrics.dlq_depth.labels(delivery.topic).inc()
            traces.setdefault(telemetry.trace_key(delivery.headers), []).append(delivery)
        for records in traces.values():
            self._tracer.start_span(
                "audit append",
                context=telemetry.extract(records[0].headers),
                start_time=started_ns,
                attributes={
                    "messaging.destination.name": sorted({d.topic for d in records}),
                    "charter.records": len(records),
                    "charter.batch_size": len(deliveries),
                },
            ).end(end_time=ended_ns)

    def _append(self, conn: Connection, deliveries: list[Delivery], now_us: int) -> None:
        pending = [self._pending(conn, d, now_us) for d in deliveries]
        self._store(conn, pending, now_us)
        self._appended_types = [p.attribution.event_type for p in pending]

    async def append_attributed(self, items: list[audit.Pending]) -> None:
        """Append records already attributed, as one transaction: the store and the tree alone,
        which is what bench/audit.py measures apart from decoding."""
        await self._retrying(lambda conn, now_us: self._store(conn, items, now_us))

    def _store(self, conn: Connection, items: list[audit.Pending], now_us: int) -> None:
        appended = audit.append(conn, items)
        log.debug("appended %d of %d", appended.added, len(items))
        before = self._committed(conn, appended.size - appended.added)
        self._pending_frontier = before.extended(appended.leaves)
        self._checkpoint_if_due(conn, appended.size, now_us)

    async def _retrying(self, work: Callable[[Connection, int], None]) -> None:
        for attempt in range(1, self._retry.attempts + 1):
            now_us = int(self._clock.now().timestamp() * 1_000_000)
            try:
                with self._engine.begin() as conn:
                    self._conn = conn
                    work(conn, now_us)
                if self._pending_frontier is not None:
                    self._frontier = self._pending_frontier
                return
            except (OperationalError, IntegrityError) as exc:
                # A locked database or a concurrent appender: retry; never skip evidence. What
                # the tree cached from the rolled-back rows, and the last head, are forgotten.
                self._tree.cache_clear()
                self._loaded = False
                self._frontier = None
                if attempt == self._retry.attempts:
                    raise
                log.warning("audit attempt %d failed, retrying: %s", attempt, exc)
                await asyncio.sleep(self._retry.delay(attempt))
            finally:
                self._conn = None
                self._pending_frontier = None

    def _load_last(self, conn: Connection) -> None:
        if not self._loaded:
            self._last = audit.latest_checkpoint(conn)
            self._loaded = True

    def _due(self, size: int, now_us: int) -> bool:
        last_size, last_at = (self._last.size, self._last.signed_at_us) if self._last else (0, 0)
        return decide.checkpoint_due(size, last_size, last_at, now_us, self._cadence)

    def _checkpoint_if_due(self, conn: Connection, size: int, now_us: int) -> None:
        self._load_last(conn)
        # Most passes stop here, on the head this replica knows of: one signed since by another
        # replica is larger, and newer, so it would make a head no more due.
        if self._refused or not self._due(size, now_us):
            return
        # Decide again on the newest head stored, read under the signing lock: another replica
        # may have signed a head over more of the log since (while this pass read `size`, say).
        heads.hold_signing(conn)
        self._last = audit.latest_checkpoint(conn)
        if not self._due(size, now_us):
            return
        pending = self._pending_frontier
        frontier = pending if pending is not None and pending.size == size else self._committed(conn, size)
        self._pending_frontier = frontier
        head = checkpoint.sign(self._signer, size, frontier.root(), now_us)
        if audit.add_checkpoint(conn, head):
            self._unpublished = True
            self._last = head
        else:
            # A head as large committed between the read above and the insert (SQLite, whose
            # writer lock is the signing lock, refuses it here): it is the newest, not this one.
            self._loaded = False

    def _committed(self, conn: Connection, size: int) -> Frontier:
        """The tree of the first `size` leaves: the one kept in memory, or (after a restart, a
        failed transaction, or rows another replica appended) rebuilt from the stored leaves."""
        if self._frontier is None or self._frontier.size != size:
            self._frontier = Frontier.of(self._tree, size)
            self._check_against_last(conn)
        return self._frontier

    def _check_against_last(self, conn: Connection) -> None:
        """A tree rebuilt from the database must still hold the last head signed: if it does not,
        the stored leaves were changed, and signing on would lend them the key. Fail closed:
        records are still appended (nothing is lost), no head is signed until it is resolved."""
        self._load_last(conn)
        last = self._last
        if last is None or self._frontier is None or last.size > self._frontier.size:
            return
        if Frontier.of(self._tree, last.size).root() != last.root:
            self._refused = (
                f"the stored leaves no longer give the root of the head signed at size {last.size}: "
                "no more heads are signed; run `charter audit verify`"
            )
            log.error("audit: %s", self._refused)

    async def publish(self, *, waiting: bool = False) -> None:
        """Publish the signed heads not yet published, smallest first, each larger than the last
        one published. `waiting`: look in the store even if this process signed nothing since
        (a head another replica signed and did not publish, or one left by a failed publish)."""
        # Most batches sign nothing: the store is asked only when a head may be waiting (one
        # signed since, or left from before a restart or a failed publish).
        if self._bus is None or not (self._unpublished or waiting):
            return
        if self._publishing:
            # The publish under way may have read the waiting heads before this one was signed.
            self._unpublished = True
            return
        self._publishing, self._unpublished = True, False
        try:
            with heads.publishing(self._engine) as conn:
                if conn is None:
                    # Another replica is publishing; what it did not see goes on a later pass.
                    self._unpublished = True
                    return
                sent, failure = await self._send(conn, self._bus)
                audit.mark_published(conn, sent)
            if failure is not None:
                raise failure
        except BaseException:
            self._unpublished = True
            raise
        finally:
            self._publishing = False

    async def _send(self, conn: Connection, bus: Bus) -> tuple[list[int], BaseException | None]:
        """Send the heads due, in order; the sizes sent, and what stopped the rest (a failure, or
        a cancellation at shutdown). The sent are marked even then: sent again, a head would
        follow itself on the topic."""
        waiting = {h.size: h for h in audit.checkpoints(conn, unpublished=True)}
        sent: list[int] = []
        try:
            for size in decide.to_publish(waiting, audit.last_published(conn)):
                await bus.publish(checkpoint.event_of(waiting[size], self._settings.tenant))
                sent.append(size)
        except BaseException as exc:
            return sent, exc
        return sent, None

    async def tick(self) -> None:
        """One pass of the timer: sign what a quiet log has not had signed yet, and publish any
        head still waiting, whoever signed it."""
        await self._retrying(lambda conn, now_us: self._checkpoint_if_due(conn, audit.size(conn), now_us))
        await self.publish(waiting=True)

    async def sign_tail(self, stop: asyncio.Event) -> None:
        """Every checkpoint interval, a pass of the timer (`tick`)."""
        period = self._settings.audit_checkpoint_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)
            try:
                await self.tick()
            except Exception:
                log.exception("signing or publishing the audit's tree head failed; the next pass tries again")


async def build(settings: Settings, bus: Bus) -> Parts:
    engine = store.make_engine(settings.database_url_for(NAME))
    audit.create(engine)
    auditor = Auditor(engine, settings, signing.Signer.load(settings.keys, NAME), bus)
    for topic, count in audit.dead_letters_by_topic(engine).items():
        metrics.dlq_depth.labels(topic).set(count)
    # The audit's own heads are not audited: each would be a new record needing a new head.
    heads = topics.name(settings, topics.Topic.AUDIT_CHECKPOINTS)
    return Parts(
        topics=[t for t in topics.all_names(settings) if t != heads],
        handle_batch=auditor.handle_batch,
        background=[auditor.sign_tail],
        close=engine.dispose,
        transactional=False,
        sink=True,
        control=ControlFollower(
            settings, NAME, bus=bus, engine=engine, store=SwitchStore(engine, audit.switches)
        ),
    )
