"""Kill switches: an operator stops an agent, a tool, or everything, at once.

`charter kill-switch on` asks the API, which names the person from their credential, signs
the KillSwitchSet with the approvals service's key and publishes it to `control`. Every service
process follows `control` with a consumer group of its own (group + instance), so every replica
sees every switch; it records the switch in its own store before acknowledging it, so the state
survives a restart, and answers KillSwitchAcknowledged so the operator knows it is in force.

A switch stops agents, and turning one off lets them act again, so a service applies only a
signed switch. One that is not is dead-lettered to `control.dlq` with the reason, under an id
every follower derives alike, so the audit keeps one letter however many services saw it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import Boolean, Column, Connection, DateTime, Engine, MetaData, String, Table, Text, select

from charter import broker, signing, topics
from charter.bus import Bus
from charter.clock import SystemClock, as_utc, derive_id, new_id
from charter.config import Settings
from charter.errors import InvalidMessage
from charter.events import Event, KillSwitchAcknowledged, KillSwitchSet
from charter.runtime import letters
from charter.runtime.delivery import Delivery
from charter.serde import decode
from charter.store import upsert

log = logging.getLogger(__name__)
CONTROL_FETCH_WAIT_MS = 200


def switch_id(agent: str | None, tool: str | None) -> str:
    """One id per scope, so `off` for a scope ends the `on` for it."""
    return f"agent={agent or '*'},tool={tool or '*'}"


@dataclass(frozen=True)
class KillSwitch:
    switch_id: str
    agent: str | None
    tool: str | None
    reason: str
    set_by: str
    since: datetime

    def matches(self, agent: str | None, tool: str | None) -> bool:
        return (self.agent is None or self.agent == agent) and (self.tool is None or self.tool == tool)

    def describe(self) -> str:
        scope = " and ".join(f"{k} {v}" for k, v in (("agent", self.agent), ("tool", self.tool)) if v)
        return f"kill switch on for {scope or 'every agent and tool'} (by {self.set_by}: {self.reason})"


def switch_event(
    *, agent: str | None, tool: str | None, active: bool, reason: str, set_by: str, tenant: str, now: datetime
) -> KillSwitchSet:
    """The (unsigned) event that sets the switch for a scope."""
    scope = switch_id(agent, tool)
    return KillSwitchSet.create(
        event_id=new_id(),
        now=now,
        tenant=tenant,
        correlation_id=scope,
        switch_id=scope,
        scope_agent=agent,
        scope_tool=tool,
        active=active,
        reason=reason,
        set_by=set_by,
    )


def matching(switches: Sequence[KillSwitch], agent: str | None, tool: str | None) -> KillSwitch | None:
    return next((s for s in switches if s.matches(agent, tool)), None)


def switches_table(metadata: MetaData, service: str) -> Table:
    return Table(
        f"{service}_kill_switches",
        metadata,
        Column("switch_id", String(400), primary_key=True),
        Column("scope_agent", String(200)),
        Column("scope_tool", String(200)),
        Column("active", Boolean, nullable=False),
        Column("reason", Text, nullable=False),
        Column("set_by", String(200), nullable=False),
        Column("changed_at", DateTime(timezone=True), nullable=False),
    )


class SwitchStore:
    """A service's own record of the switches, changed only by newer events (last one wins)."""

    def __init__(self, engine: Engine, table: Table) -> None:
        self._engine = engine
        self._table = table

    def active(self) -> list[KillSwitch]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(self._table).where(self._table.c.active.is_(True))).mappings().all()
        return [
            KillSwitch(
                r["switch_id"],
                r["scope_agent"],
                r["scope_tool"],
                r["reason"],
                r["set_by"],
                as_utc(r["changed_at"]),
            )
            for r in rows
        ]

    def apply(self, conn: Connection, event: KillSwitchSet) -> bool:
        """Record the change unless a newer one is already recorded. True if the event is the
        switch's current state (newly recorded, or recorded already)."""
        t = self._table
        at = event.envelope.occurred_at
        current = conn.execute(select(t.c.changed_at).where(t.c.switch_id == event.switch_id)).scalar()
        if current is not None and as_utc(current) > at:
            return False
        upsert(
            conn,
            t,
            {
                "switch_id": event.switch_id,
                "scope_agent": event.scope_agent,
                "scope_tool": event.scope_tool,
                "active": event.active,
                "reason": event.reason,
                "set_by": event.set_by,
                "changed_at": at,
            },
            "switch_id",
        )
        return True


OnChange = Callable[[KillSwitchSet], Awaitable[None]]


class ControlFollower:
    """Follows `control` for one service process: records kill switches, runs the service's own
    reaction (cancelling runs, say), then acknowledges.

    It joins no consumer group: every replica must see every switch, and a group would split
    the partitions among them. It reads `control` from the beginning at each start instead;
    applying a switch is idempotent (the latest change wins), and reactions are deduplicated by
    the switch event's id, so reading history again changes nothing that was done.
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        *,
        bus: Bus,
        engine: Engine,
        store: SwitchStore,
        on_change: OnChange | None = None,
    ) -> None:
        self._settings = settings
        self._service = service
        self._bus = bus
        self._store = store
        self._engine = engine
        self._on_change = on_change
        self._clock = SystemClock()
        self._key = signing.Verifier.load(settings.keys, "approvals")
        self.switches: list[KillSwitch] = store.active()

    async def run(self, stop: asyncio.Event, on_assigned: Callable[[], None] = lambda: None) -> None:
        name = topics.name(self._settings, topics.Topic.CONTROL)
        # A switch must be in force within a second, not within a hop: a longer fetch wait keeps
        # five idle followers from polling the broker fifty times a second each.
        consumer = AIOKafkaConsumer(
            **{**broker.consumer_kwargs(self._settings), "fetch_max_wait_ms": CONTROL_FETCH_WAIT_MS}
        )
        await consumer.start()
        try:
            admin_partitions = consumer.partitions_for_topic(name) or await _partitions(self._settings, name)
            parts = [TopicPartition(name, p) for p in sorted(admin_partitions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            on_assigned()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                for records in batch.values():
                    for record in records:
                        await self._handle(record)
        finally:
            await consumer.stop()

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            event = decode(record.value or b"")
        except InvalidMessage:
            return  # the audit keeps it; control carries nothing a service must act on besides switches
        if not isinstance(event, KillSwitchSet):
            return
        if not self._key.verify(event):
            state = "on" if event.active else "off"
            reason = (
                f"kill switch {event.switch_id} {state} claimed by {event.set_by!r} "
                "is not signed by the approvals service: switches are set through its API (or signed "
                "offline with its key); not applied"
            )
            log.error("%s", reason)
            await self._dead_letter(record, event, reason)
            return
        await self._apply(event)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], event: Event, reason: str) -> None:
        delivery = Delivery(
            record.topic, record.partition, record.offset, record.key, record.value or b"", (), 0
        )
        position = f"{record.topic}:{record.partition}:{record.offset}"
        letter = letters.letter(
            self._settings,
            # The same id from every follower: the audit keeps one letter.
            event_id=derive_id(position, "dlq:control"),
            now=self._clock.now(),
            delivery=delivery,
            event=event,
            reason=reason,
            error_type="ForgedEvent",
            service="control",
        )
        try:
            await self._bus.publish(letter)
        except Exception:
            # The forged switch is not applied either way, and the audit keeps it on `control`;
            # a letter that cannot be sent must not stop the service reading the rest.
            log.exception("the dead letter of the forged switch at %s could not be sent", position)

    async def _apply(self, event: KillSwitchSet) -> None:
        with self._engine.begin() as conn:
            current = self._store.apply(conn, event)
        self.switches = self._store.active()
        if not current:
            return  # history read again at start: a later change already holds
        if self._on_change is not None:
            # Not only on a change: a reaction cut short by a crash is redone, and reactions
            # are idempotent by the switch event's id.
            await self._on_change(event)
        log.warning("kill switch %s %s: %s", event.switch_id, "ON" if event.active else "off", event.reason)
        await self._bus.publish(
            KillSwitchAcknowledged.caused_by(
                event,
                event_id=derive_id(event.event_id, f"ack:{self._service}:{self._settings.instance}"),
                now=self._clock.now(),
                switch_id=event.switch_id,
                active=event.active,
                service=self._service,
                instance=self._settings.instance,
            )
        )


async def _partitions(settings: Settings, name: str) -> set[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap())
    await admin.start()
    try:
        [described] = await admin.describe_topics([name])
    finally:
        await admin.close()
    return {p["partition"] for p in described["partitions"]}
