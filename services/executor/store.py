"""The executor's record of every idempotency key: started before the call, completed after."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.expression import Executable

from charter import serde
from charter.events import ActionApproved, Event
from charter.killswitch import switches_table
from services.executor.decide import Execution, idempotency_key

metadata = MetaData()
executions = Table(
    "executor_executions",
    metadata,
    Column("idempotency_key", String(200), primary_key=True),
    Column("action_id", String(64), nullable=False),
    Column("run_id", String(64), nullable=False, index=True),
    Column("tool", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("outcome", LargeBinary),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


switches = switches_table(metadata, "executor")
# Who is calling a key's tool, and until when: a replica that is handed the same record (a
# rebalance) waits for the holder rather than calling too. A table of its own, so stores made
# before it existed gain it without a migration.
claims = Table(
    "executor_claims",
    metadata,
    Column("idempotency_key", String(200), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("until", DateTime(timezone=True), nullable=False),
)


# The statements every action runs, built once (see charter.store._upsert). RETURNING, not
# rowcount, tells whether the claim was inserted: drivers report -1 for an insert that may do nothing.
_CLAIM = {
    dialect: insert_(claims).on_conflict_do_nothing().returning(claims.c.idempotency_key)
    for dialect, insert_ in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_RENEW = (
    update(claims)
    .where(claims.c.idempotency_key == bindparam("key"))
    .where(or_(claims.c.owner == bindparam("owner"), claims.c.until < bindparam("now")))
    .values(owner=bindparam("owner"), until=bindparam("until"))
)
_GET = select(executions.c.status, executions.c.attempts, executions.c.outcome).where(
    executions.c.idempotency_key == bindparam("key")
)
_GET_MANY = select(
    executions.c.idempotency_key, executions.c.status, executions.c.attempts, executions.c.outcome
).where(executions.c.idempotency_key.in_(bindparam("keys", expanding=True)))
_UNCLAIM = delete(claims).where(claims.c.idempotency_key == bindparam("key"))


def claim(conn: Connection, key: str, owner: str, now: datetime, until: datetime) -> bool:
    """Take the key for `owner` until `until`, unless someone else holds it now. The caller's
    transaction makes the claim and the `started` record one."""
    values = {"idempotency_key": key, "owner": owner, "until": until}
    if conn.execute(_CLAIM[conn.dialect.name], values).first() is not None:
        return True
    renewed = conn.execute(_RENEW, {"key": key, "owner": owner, "now": now, "until": until})
    return bool(renewed.rowcount)


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def _execution(status: Literal["started", "completed"], attempts: int, outcome: bytes | None) -> Execution:
    decoded = serde.decode(outcome, remember=True) if outcome is not None else None
    return Execution(status=status, attempts=attempts, outcome=decoded)


def get(conn: Connection, key: str) -> Execution | None:
    row = conn.execute(_GET, {"key": key}).first()
    return None if row is None else _execution(row.status, row.attempts, row.outcome)


def get_many(conn: Connection, keys: Sequence[str]) -> dict[str, Execution]:
    """What the store knows of those keys it knows, in one query."""
    if not keys:
        return {}
    rows = conn.execute(_GET_MANY, {"keys": list(keys)})
    return {row.idempotency_key: _execution(row.status, row.attempts, row.outcome) for row in rows}


def _row(approved: ActionApproved, attempts: int, now: datetime, outcome: Event | None) -> dict[str, Any]:
    return {
        "idempotency_key": idempotency_key(approved),
        "action_id": approved.action.action_id,
        "run_id": approved.envelope.run_id or "",
        "tool": approved.action.tool,
        "status": "started" if outcome is None else "completed",
        "attempts": attempts,
        "outcome": serde.encode(outcome) if outcome is not None else None,
        "updated_at": now,
    }


def _saving(dialect: str) -> Executable:
    """Insert or update a key's record, but never one already `completed`: a completed key's
    outcome is what it is, whoever comes later with another (a replica that was handed the
    same record and decided on what it read before)."""
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(executions)
    columns = [c.name for c in executions.columns if c.name != "idempotency_key"]
    return stmt.on_conflict_do_update(
        index_elements=["idempotency_key"],
        set_={c: stmt.excluded[c] for c in columns},
        where=executions.c.status != "completed",
    )


_SAVE = {dialect: _saving(dialect) for dialect in ("postgresql", "sqlite")}


def save(
    conn: Connection, approved: ActionApproved, attempts: int, now: datetime, outcome: Event | None = None
) -> None:
    """Record `started` (no outcome yet) or `completed` (with the outcome event)."""
    if outcome is not None:
        save_outcomes(conn, [(approved, attempts, outcome)], now)
        return
    conn.execute(_SAVE[conn.dialect.name], _row(approved, attempts, now, None))


def save_outcomes(conn: Connection, done: Sequence[tuple[ActionApproved, int, Event]], now: datetime) -> None:
    """Record each action `completed` with its outcome, and let its claim go, all at once."""
    if not done:
        return
    conn.execute(_SAVE[conn.dialect.name], [_row(a, n, now, outcome) for a, n, outcome in done])
    conn.execute(_UNCLAIM, [{"key": idempotency_key(a)} for a, _, _ in done])
