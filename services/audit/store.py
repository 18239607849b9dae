"""The audit log in SQL: one row per event, chained by hash, never updated or deleted.

A duplicate event id (a redelivery) is not appended twice. Columns beside the raw bytes
(type, run, agent, time) exist for queries; the hash covers the ones a query selects by.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    select,
)

from charter.killswitch import switches_table
from services.audit.decide import GENESIS, Row, row_hash

metadata = MetaData()
log_table = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(200), nullable=False, unique=True),
    Column("event_type", String(100), nullable=False),
    Column("run_id", String(64), index=True),
    Column("agent", String(200)),
    Column("tenant", String(200)),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True)),
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)


switches = switches_table(metadata, "audit")


@dataclass(frozen=True)
class Entry:
    """An event about to be appended, with what the service could read from it."""

    event_id: str
    event_type: str
    run_id: str | None
    agent: str | None
    tenant: str | None
    occurred_at: datetime | None
    topic: str
    partition: int
    offset: int
    value: bytes


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def append(conn: Connection, entries: Sequence[Entry], recorded_at_us: int) -> int:
    """Append the entries not yet in the log, chained after its head. Returns how many."""
    ids = list({e.event_id for e in entries})
    seen = set(conn.execute(select(log_table.c.event_id).where(log_table.c.event_id.in_(ids))).scalars())
    head = conn.execute(
        select(log_table.c.seq, log_table.c.hash).order_by(log_table.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
    rows = []
    for entry in entries:
        if entry.event_id in seen:
            continue
        seen.add(entry.event_id)
        seq += 1
        digest = row_hash(
            prev,
            seq=seq,
            event_id=entry.event_id,
            event_type=entry.event_type,
            run_id=entry.run_id,
            topic=entry.topic,
            partition=entry.partition,
            offset=entry.offset,
            recorded_at_us=recorded_at_us,
            value=entry.value,
        )
        rows.append(
            {
                "seq": seq,
                "event_id": entry.event_id,
                "event_type": entry.event_type,
                "run_id": entry.run_id,
                "agent": entry.agent,
                "tenant": entry.tenant,
                "topic": entry.topic,
                "partition": entry.partition,
                "offset": entry.offset,
                "occurred_at": entry.occurred_at,
                "recorded_at_us": recorded_at_us,
                "value": entry.value,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    if rows:
        conn.execute(log_table.insert(), rows)
    return len(rows)


def rows(conn: Connection, batch: int = 10_000) -> Iterator[Row]:
    """Every row in chain order, read in pages so memory stays flat on a large log."""
    after = 0
    while True:
        page = conn.execute(
            select(*(log_table.c[f] for f in Row.__dataclass_fields__))
            .where(log_table.c.seq > after)
            .order_by(log_table.c.seq)
            .limit(batch)
        ).all()
        if not page:
            return
        for r in page:
            yield Row(**r._mapping)
        after = page[-1].seq


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(log_table)).scalar_one())


@dataclass(frozen=True)
class Recorded:
    seq: int
    event_type: str
    topic: str
    occurred_at: datetime | None
    value: bytes


def timeline(conn: Connection, run_id: str) -> list[Recorded]:
    query = (
        select(
            log_table.c.seq,
            log_table.c.event_type,
            log_table.c.topic,
            log_table.c.occurred_at,
            log_table.c.value,
        )
        .where(log_table.c.run_id == run_id)
        .order_by(log_table.c.seq)
    )
    return [Recorded(**r._mapping) for r in conn.execute(query)]


def run_ids(conn: Connection, prefix: str = "", limit: int = 50) -> list[str]:
    """The most recently active run ids (optionally those starting with `prefix`), newest first."""
    last = func.max(log_table.c.seq)
    query = select(log_table.c.run_id).where(log_table.c.run_id.is_not(None)).group_by(log_table.c.run_id)
    if prefix:
        query = query.where(log_table.c.run_id.startswith(prefix, autoescape=True))
    return list(conn.execute(query.order_by(last.desc()).limit(limit)).scalars())
