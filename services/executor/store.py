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
    select,
)

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


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def get(conn: Connection, key: str) -> Execution | None:
    row = conn.execute(
        select(executions.c.status, executions.c.attempts, executions.c.outcome).where(
            executions.c.idempotency_key == key
        )
    ).first()
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
