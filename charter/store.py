"""SQL stores: SQLite by default (one file per service under the home), PostgreSQL in production.

Stateful services record the id of every event they processed, with the outputs it produced,
in the same transaction as their effect (the inbox). A redelivered event finds its record and
gets the same outputs again, byte for byte, without redoing the effect.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from charter import serde
from charter.events import Event


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the CLI read while the service writes; NORMAL sync is durable in WAL mode
            # against process crashes, which is the failure that matters here.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upsert(conn: Connection, table: Table, values: dict[str, Any], key: str) -> None:
    """Insert a row, or update it where `key` already exists, in one statement."""
    insert_ = pg_insert if conn.engine.dialect.name == "postgresql" else sqlite_insert
    update = {k: v for k, v in values.items() if k != key}
    conn.execute(insert_(table).values(**values).on_conflict_do_update(index_elements=[key], set_=update))


def inbox_table(metadata: MetaData, service: str) -> Table:
    return Table(
        f"{service}_inbox",
        metadata,
        Column("event_id", String(64), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False),
        Column("outputs", LargeBinary, nullable=False),
    )


def _pack(events: Sequence[Event]) -> bytes:
    return json.dumps([serde.encode(e).hex() for e in events]).encode()


def _unpack(blob: bytes) -> list[Event]:
    return [serde.decode(bytes.fromhex(h)) for h in json.loads(blob)]


class Inbox:
    def __init__(self, table: Table) -> None:
        self.table = table

    def outputs_of(self, conn: Connection, event_id: str) -> list[Event] | None:
        blob = conn.execute(select(self.table.c.outputs).where(self.table.c.event_id == event_id)).scalar()
        return None if blob is None else _unpack(blob)

    def record(self, conn: Connection, event: Event, outputs: Sequence[Event], now: Any) -> None:
        conn.execute(
            insert(self.table).values(event_id=event.event_id, processed_at=now, outputs=_pack(outputs))
        )
