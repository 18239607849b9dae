"""The audit log in SQL: one row per event, a Merkle leaf each, and the signed tree heads.

Rows are appended, never updated, except by retention (which removes a value and keeps its
digest) and by a purge (which deletes a data subject's key, not a row). A duplicate event id (a
redelivery) is not appended twice. The schema is Alembic's (services/audit/migrations); the
tables here are what the code reads and writes, and a test keeps the two the same.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    any_,
    bindparam,
    case,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from charter.killswitch import switches_table
from services.audit import migrations, record
from services.audit.record import Attribution

metadata = MetaData()
log_table = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(200), nullable=False, unique=True),
    Column("event_type", String(100), nullable=False),
    Column("run_id", String(64), index=True),
    Column("agent", String(200)),
    Column("actor", String(200)),
    Column("tenant", String(200)),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True)),
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("service", String(200)),
    Column("host", String(255)),
    Column("source", String(400)),
    Column("outcome", String(100)),
    Column("policy_hash", String(64)),
    Column("trace_id", String(32)),
    Column("subject", String(200), index=True),
    Column("meta", LargeBinary, nullable=False),
    Column("value", LargeBinary),
    Column("value_digest", LargeBinary(32)),
    Column("leaf_hash", LargeBinary(32), nullable=False),
)

checkpoints_table = Table(
    "audit_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("signed_at_us", BigInteger, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
    Column("published", Boolean, nullable=False),
)

# The roots of every complete block of TILE leaves: an inclusion or consistency proof at a
# million records reads a few thousand of these instead of every leaf (derived data, rebuilt
# from the leaves by `charter audit verify` to check it).
TILE = 256
tiles_table = Table(
    "audit_tiles",
    metadata,
    Column("tile", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
)

subject_keys_table = Table(
    "audit_subject_keys",
    metadata,
    Column("subject", String(200), primary_key=True),
    # None once purged: the subject's sealed fields can no longer be read by anyone.
    Column("key", LargeBinary(32)),
    Column("created_at_us", BigInteger, nullable=False),
    Column("purged_at_us", BigInteger),
    Column("purged_by", String(200)),
    # A run's own key (subject "run:<id>") names the subject its run turned out to have: a purge of
    # that subject deletes both.
    Column("belongs_to", String(200), index=True),
)

switches = switches_table(metadata, "audit")
RUN_KEY = "run:"  # the prefix of a run's own key in audit_subject_keys


def create(engine: Engine) -> None:
    """Bring the schema to the newest migration (creating it on a new database)."""
    migrations.upgrade(engine)


@dataclass(frozen=True)
class Pending:
    """An event about to be appended: what the audit read from it, and its (sealed) bytes."""

    attribution: Attribution
    value: bytes


@dataclass(frozen=True)
class Appended:
    size: int
    leaves: list[bytes]  # of the rows added, in order

    @property
    def added(self) -> int:
        return len(self.leaves)


def size(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(log_table.c.seq), 0))).scalar_one())


def _among(conn: Connection, ids: list[str]) -> ColumnElement[bool]:
    """event_id among `ids`. On PostgreSQL as one array parameter: a list of hundreds of
    parameters led the planner, before the table's first ANALYZE, to scan the whole table for
    every batch (170 ms at 20,000 rows); `= ANY(array)` keeps to the unique index."""
    if conn.dialect.name == "postgresql":
        return log_table.c.event_id == any_(bindparam("ids", ids, type_=ARRAY(String)))
    return log_table.c.event_id.in_(ids)


def append(conn: Connection, items: Sequence[Pending]) -> Appended:
    """Append the items not yet in the log after its last row, each with its leaf hash."""
    ids = list({p.attribution.event_id for p in items})
    seen = set(conn.execute(select(log_table.c.event_id).where(_among(conn, ids))).scalars())
    seq = size(conn)
    rows, leaves = [], []
    for item in items:
        a = item.attribution
        if a.event_id in seen:
            continue
        seen.add(a.event_id)
        seq += 1
        meta = record.encode_meta(seq, a)
        leaf = record.leaf(meta, record.value_digest(item.value))
        leaves.append(leaf)
        rows.append(
            {
                **a.as_row(),
                "seq": seq,
                "meta": meta,
                "value": item.value,
                "value_digest": None,
                "leaf_hash": leaf,
            }
        )
    if rows:
        _insert_many(conn, rows)
        _add_tiles(conn, seq - len(leaves), leaves)
    return Appended(seq, leaves)


def perfect_root(hashes: Sequence[bytes]) -> bytes:
    """The root of a perfect subtree over `hashes` (a power of two of them), RFC 6962's nodes."""
    level = list(hashes)
    while len(level) > 1:
        level = [record.node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _add_tiles(conn: Connection, before: int, added: list[bytes]) -> None:
    """Record the root of every block of TILE leaves the rows just added complete."""
    size = before + len(added)
    done = []
    for tile in range(before // TILE, size // TILE):
        start = tile * TILE
        earlier = leaves(conn, start, before - start) if start < before else []
        block = [*earlier, *added[max(0, start - before) : start + TILE - before]]
        done.append({"tile": tile, "root": perfect_root(block)})
    if done:
        conn.execute(tiles_table.insert(), done)


def tiles(conn: Connection, first: int, count: int) -> list[bytes]:
    query = (
        select(tiles_table.c.root)
        .where(tiles_table.c.tile >= first, tiles_table.c.tile < first + count)
        .order_by(tiles_table.c.tile)
    )
    return [bytes(r) for r in conn.execute(query).scalars()]


_INSERTS: dict[
    str, tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]], list[tuple[int, str, Any]], bool]
] = {}


def _insert_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """One executemany straight to the driver, with SQLAlchemy's own SQL and value conversions
    for the dialect: the generic path spent more per row than the database did."""
    dialect = conn.dialect
    if dialect.name not in _INSERTS:
        compiled = log_table.insert().compile(dialect=dialect)
        names = list(compiled.positiontup or compiled.params)
        converters = [
            (i, n, convert)
            for i, n in enumerate(names)
            if (convert := log_table.c[n].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        _INSERTS[dialect.name] = (str(compiled), itemgetter(*names), converters, bool(compiled.positional))
    sql, pick, converters, positional = _INSERTS[dialect.name]
    for row in rows:
        for _, name, convert in converters:
            if row[name] is not None:
                row[name] = convert(row[name])
    conn.exec_driver_sql(sql, [pick(r) for r in rows] if positional else rows)


def leaves(conn: Connection, offset: int, width: int) -> list[bytes]:
    """The leaf hashes of rows offset+1 .. offset+width, in order."""
    query = (
        select(log_table.c.leaf_hash)
        .where(log_table.c.seq > offset, log_table.c.seq <= offset + width)
        .order_by(log_table.c.seq)
    )
    return [bytes(h) for h in conn.execute(query).scalars()]


# A row as verification reads it: seq, meta, value, value_digest, leaf_hash.
Row = tuple[int, bytes, bytes | None, bytes | None, bytes]


def stored(conn: Connection, batch: int = 20_000) -> Iterator[Row]:
    """Every row in log order, streamed (a server-side cursor on PostgreSQL), as plain tuples:
    verification reads a million of them, and objects per row would cost more than the hashing."""
    query = select(
        log_table.c.seq, log_table.c.meta, log_table.c.value, log_table.c.value_digest, log_table.c.leaf_hash
    ).order_by(log_table.c.seq)
    if conn.dialect.name == "sqlite":
        # sqlite3's own cursor already streams; SQLAlchemy's rows around its tuples cost a
        # third of the whole check.
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(str(query.compile(dialect=conn.dialect)))
            while page := cursor.fetchmany(batch):
                yield from page
        finally:
            cursor.close()
        return
    result = conn.execution_options(yield_per=batch).execute(query)
    for part in result.partitions():
        yield from part


def attributions(conn: Connection, batch: int = 20_000) -> Iterator[tuple[int, bytes, Attribution]]:
    """Every row's query columns with its `meta`, in log order, for checking one against the other."""
    cols = [log_table.c[f] for f in record.FIELDS]
    after = 0
    while True:
        page = conn.execute(
            select(log_table.c.seq, log_table.c.meta, *cols)
            .where(log_table.c.seq > after)
            .order_by(log_table.c.seq)
            .limit(batch)
        ).all()
        if not page:
            return
        for row in page:
            yield row[0], bytes(row[1]), Attribution(*row[2:])
        after = page[-1][0]


def subject_of_run(conn: Connection, run_id: str) -> str | None:
    """The data subject the run's events were sealed under, if any of them named one: a real
    subject before the run's own key, which stands in for it only until the run names it."""
    return conn.execute(
        select(log_table.c.subject)
        .where(log_table.c.run_id == run_id, log_table.c.subject.is_not(None))
        .order_by(log_table.c.subject.startswith(RUN_KEY), log_table.c.seq)
        .limit(1)
    ).scalar()


def subject_of_event(conn: Connection, event_id: str) -> str | None:
    return conn.execute(select(log_table.c.subject).where(log_table.c.event_id == event_id)).scalar()


def values(conn: Connection, batch: int = 5_000) -> Iterator[tuple[int, bytes, str | None]]:
    """Every row's event bytes still held, with the data subject they name, in log order."""
    after = 0
    while True:
        page = conn.execute(
            select(log_table.c.seq, log_table.c.value, log_table.c.subject)
            .where(log_table.c.seq > after, log_table.c.value.is_not(None))
            .order_by(log_table.c.seq)
            .limit(batch)
        ).all()
        if not page:
            return
        for seq, value, subject in page:
            yield seq, bytes(value), subject
        after = page[-1][0]


def removed(conn: Connection) -> Iterator[tuple[int, bytes, int]]:
    """The rows whose event bytes were removed: seq, meta, when recorded."""
    query = (
        select(log_table.c.seq, log_table.c.meta, log_table.c.recorded_at_us)
        .where(log_table.c.value.is_(None))
        .order_by(log_table.c.seq)
    )
    for seq, meta, recorded_at_us in conn.execute(query):
        yield seq, bytes(meta), recorded_at_us


def content_leaf(conn: Connection, seq: int) -> bytes | None:
    """Record `seq`'s leaf recomputed from its canonical bytes and event bytes (or their digest)."""
    row = conn.execute(
        select(log_table.c.meta, log_table.c.value, log_table.c.value_digest).where(log_table.c.seq == seq)
    ).first()
    if row is None:
        return None
    digest = (
        record.value_digest(bytes(row.value)) if row.value is not None else bytes(row.value_digest or b"")
    )
    return record.leaf(bytes(row.meta), digest)


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(log_table)).scalar_one())


@dataclass(frozen=True)
class Head:
    """A signed tree head as stored and published."""

    size: int
    root: bytes
    signed_at_us: int
    key_id: str
    signature: bytes


def add_checkpoint(conn: Connection, head: Head) -> bool:
    """Store `head` unless a head as large is stored already (signed by another replica from a
    newer view of the log); whether it was stored. One statement, so on SQLite, whose writer
    lock it takes, no other head can come between the check and the insert."""
    larger = select(checkpoints_table.c.size).where(checkpoints_table.c.size >= head.size).exists()
    row = select(
        literal(head.size, BigInteger),
        literal(head.root, LargeBinary),
        literal(head.signed_at_us, BigInteger),
        literal(head.key_id, String),
        literal(head.signature, LargeBinary),
        literal(False, Boolean),
    ).where(~larger)
    names = ["size", "root", "signed_at_us", "key_id", "signature", "published"]
    return conn.execute(checkpoints_table.insert().from_select(names, row)).rowcount == 1


def _heads_query() -> Select[Any]:
    return select(
        checkpoints_table.c.size,
        checkpoints_table.c.root,
        checkpoints_table.c.signed_at_us,
        checkpoints_table.c.key_id,
        checkpoints_table.c.signature,
    )


def _heads(conn: Connection, query: Select[Any]) -> list[Head]:
    return [Head(s, bytes(r), at, k, bytes(sig)) for s, r, at, k, sig in conn.execute(query)]


def checkpoints(conn: Connection, *, unpublished: bool = False) -> list[Head]:
    query = _heads_query().order_by(checkpoints_table.c.size)
    if unpublished:
        query = query.where(checkpoints_table.c.published.is_(False))
    return _heads(conn, query)


def latest_checkpoint(conn: Connection) -> Head | None:
    heads = _heads(conn, _heads_query().order_by(checkpoints_table.c.size.desc()).limit(1))
    return heads[0] if heads else None


def last_published(conn: Connection) -> int:
    """The size of the largest head published to audit.checkpoints (0 if none)."""
    query = select(func.coalesce(func.max(checkpoints_table.c.size), 0)).where(
        checkpoints_table.c.published.is_(True)
    )
    return int(conn.execute(query).scalar_one())


def published_sizes(conn: Connection) -> set[int]:
    """The sizes of the heads the service has published to audit.checkpoints."""
    query = select(checkpoints_table.c.size).where(checkpoints_table.c.published.is_(True))
    return set(conn.execute(query).scalars())


def mark_published(conn: Connection, sizes: Sequence[int]) -> None:
    if sizes:
        conn.execute(
            update(checkpoints_table).where(checkpoints_table.c.size.in_(sizes)).values(published=True)
        )


def selected(
    conn: Connection,
    *,
    run_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tenants: Collection[str] | None = None,
) -> Iterator[Any]:
    """Whole rows, in log order, of one run and/or a time range (and/or some tenants), streamed."""
    query = select(log_table).order_by(log_table.c.seq)
    if tenants is not None:
        query = query.where(log_table.c.tenant.in_(sorted(tenants)))
    if run_id:
        query = query.where(log_table.c.run_id == run_id)
    if since:
        query = query.where(log_table.c.occurred_at >= since)
    if until:
        query = query.where(log_table.c.occurred_at < until)
    yield from conn.execute(query.execution_options(yield_per=1000))


@dataclass(frozen=True)
class Recorded:
    seq: int
    event_type: str
    topic: str
    occurred_at: datetime | None
    value: bytes | None


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


def run_ids(
    conn: Connection, prefix: str = "", limit: int = 50, tenants: Collection[str] | None = None
) -> list[str]:
    """The most recently active runs (optionally those whose id starts with `prefix`, or those
    started for one of `tenants`), newest first. A run is one the planner started: events that
    only name a run id (forged ones, say, which were dead-lettered) make no run of their own."""
    last = func.max(log_table.c.seq)
    start = log_table.c.event_type == "RunStarted"
    if tenants is not None:
        start = start & log_table.c.tenant.in_(sorted(tenants))
    started = func.sum(case((start, 1), else_=0))
    query = (
        select(log_table.c.run_id)
        .where(log_table.c.run_id.is_not(None))
        .group_by(log_table.c.run_id)
        .having(started > 0)
    )
    if prefix:
        query = query.where(log_table.c.run_id.startswith(prefix, autoescape=True))
    return list(conn.execute(query.order_by(last.desc()).limit(limit)).scalars())


def dead_letters_by_topic(engine: Engine) -> dict[str, int]:
    """Records from each dead-letter topic in the log: the depth the audit service counts on from."""
    query = (
        select(log_table.c.topic, func.count())
        .where(log_table.c.event_type == "DeadLettered")
        .group_by(log_table.c.topic)
    )
    with engine.connect() as conn:
        return {str(topic): int(n) for topic, n in conn.execute(query)}
