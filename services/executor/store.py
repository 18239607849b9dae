"""The executor's record of every idempotency key: started before the call, completed after."""

from __future__ import annotations

from datetime import datetime

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

from charter import serde
from charter.events import ActionApproved, Event
from charter.killswitch import switches_table
from charter.store import upsert
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


def get(conn: Connection, key: str) -> Execution | None:
    row = conn.execute(_GET, {"key": key}).first()
    if row is None:
        return None
    outcome = serde.decode(row.outcome) if row.outcome is not None else None
    return Execution(status=row.status, attempts=row.attempts, outcome=outcome)


def save(
    conn: Connection, approved: ActionApproved, attempts: int, now: datetime, outcome: Event | None = None
) -> None:
    """Record `started` (no outcome yet) or `completed` (with the outcome event)."""
    upsert(
        conn,
        executions,
        {
            "idempotency_key": idempotency_key(approved),
            "action_id": approved.action.action_id,
            "run_id": approved.envelope.run_id or "",
            "tool": approved.action.tool,
            "status": "started" if outcome is None else "completed",
            "attempts": attempts,
            "outcome": serde.encode(outcome) if outcome is not None else None,
            "updated_at": now,
        },
        "idempotency_key",
    )
    if outcome is not None:
        conn.execute(_UNCLAIM, {"key": idempotency_key(approved)})
