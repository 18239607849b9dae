"""SQL stores: SQLite by default (one file per service under the home), PostgreSQL in production.

Stateful services record the id of every event they processed, with the outputs it produced,
in the same transaction as their effect (the inbox). A redelivered event finds its record and
gets the same outputs again, byte for byte, without redoing the effect.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    Text,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.expression import Executable

from charter import serde
from charter.errors import ConfigError
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


@contextmanager
def serialized(engine: Engine, name: str) -> Iterator[Connection]:
    """A transaction no other process runs at the same time under the same `name`, for state
    that replicas share: a transaction-scoped advisory lock on PostgreSQL, a lock file beside the
    database on SQLite (which only ever serves one machine)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            conn.execute(select(func.pg_advisory_xact_lock(key)))
            yield conn
        return
    database = engine.url.database or ""
    lock = Path(f"{database}.{name}.lock") if database and database != ":memory:" else None
    with _file_lock(lock), engine.begin() as conn:
        yield conn


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create_checked(engine: Engine, metadata: MetaData) -> None:
    """Create the tables that do not exist, and refuse to run on a table an older version made
    without a column this one needs: a clear stop at start rather than errors mid-run."""
    metadata.create_all(engine)
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise ConfigError(
                f"table {table.name} in {engine.url.render_as_string(hide_password=True)} was made by an "
                f"older Charter and lacks {', '.join(missing)}: move that store aside and start again"
            )


def upsert(conn: Connection, table: Table, values: dict[str, Any], key: str | tuple[str, ...]) -> None:
    """Insert a row, or update it where its key (one column or several) exists, in one statement."""
    columns = (key,) if isinstance(key, str) else key
    conn.execute(_upsert(conn.dialect.name, table, columns, tuple(values)), values)


def upsert_many(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key: tuple[str, ...]) -> None:
    """`upsert` for many rows of the same columns, as one statement executed many times."""
    if rows:
        conn.execute(_upsert(conn.dialect.name, table, key, tuple(rows[0])), list(rows))


@functools.cache
def _upsert(dialect: str, table: Table, key: tuple[str, ...], columns: tuple[str, ...]) -> Executable:
    """The statement, built once per table and columns: SQLAlchemy builds and hashes a statement
    made afresh on every call (about 120 µs of a 135 µs upsert), and one reused skips both."""
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    update = {c: stmt.excluded[c] for c in columns if c not in key}
    return stmt.on_conflict_do_update(index_elements=list(key), set_=update)


@functools.cache
def _insert_new(dialect: str, table: Table, key: str) -> Executable:
    """Insert a row unless its key exists: one statement, where a read and a write were two."""
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    return stmt.on_conflict_do_nothing(index_elements=[key])


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
    return [serde.decode(bytes.fromhex(h), remember=True) for h in json.loads(blob)]


class Inbox:
    def __init__(self, table: Table) -> None:
        self.table = table
        # Built once (see _upsert): these run for every event a service handles.
        self._one = select(table.c.outputs).where(table.c.event_id == bindparam("event_id"))
        self._many = select(table.c.event_id, table.c.outputs).where(
            table.c.event_id.in_(bindparam("event_ids", expanding=True))
        )
        self._insert = insert(table)

    def outputs_of(self, conn: Connection, event_id: str) -> list[Event] | None:
        blob = conn.execute(self._one, {"event_id": event_id}).scalar()
        return None if blob is None else _unpack(blob)

    def outputs_of_many(self, conn: Connection, event_ids: Sequence[str]) -> dict[str, list[Event]]:
        """The recorded outputs of those of `event_ids` already processed, by event id."""
        if not event_ids:
            return {}
        rows = conn.execute(self._many, {"event_ids": list(event_ids)})
        return {event_id: _unpack(blob) for event_id, blob in rows}

    def record(self, conn: Connection, event: Event, outputs: Sequence[Event], now: Any) -> None:
        self.record_many(conn, [(event, outputs)], now)

    def record_many(self, conn: Connection, done: Sequence[tuple[Event, Sequence[Event]]], now: Any) -> None:
        if done:
            rows = [{"event_id": e.event_id, "processed_at": now, "outputs": _pack(outs)} for e, outs in done]
            conn.execute(self._insert, rows)


class Traces:
    """The trace something began in (a run, an approval), kept by its id as the `traceparent`
    headers, so what happens to it later, in another record, another process or after a
    person's decision hours on, continues that trace instead of starting one of its own."""

    def __init__(self, metadata: MetaData, name: str, key: str) -> None:
        self.table = Table(
            name,
            metadata,
            Column(key, String(64), primary_key=True),
            Column("headers", Text, nullable=False),
        )
        self._key = self.table.c[key]
        # Built once, as every statement a record runs (see _upsert).
        self._of = select(self.table.c.headers).where(self._key == bindparam("key"))

    def keep(self, conn: Connection, key: str, headers: Sequence[tuple[str, bytes]]) -> None:
        """Keep the trace of `key` (the first one kept stays)."""
        if headers:
            text = json.dumps([[k, v.decode("latin-1")] for k, v in headers])
            conn.execute(
                _insert_new(conn.dialect.name, self.table, self._key.name),
                {self._key.name: key, "headers": text},
            )

    def of(self, conn: Connection, key: str) -> list[tuple[str, bytes]]:
        text = conn.execute(self._of, {"key": key}).scalar()
        return [(k, v.encode("latin-1")) for k, v in json.loads(text)] if text else []
