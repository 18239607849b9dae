"""Pending and decided approvals, in SQL, so a pending action survives any restart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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
    select,
    update,
)

from charter import serde
from charter.events import ApprovalRequested
from charter.killswitch import switches_table
from charter.store import Inbox, inbox_table

metadata = MetaData()
approvals = Table(
    "approvals",
    metadata,
    Column("approval_id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("agent", String(200), nullable=False),
    Column("tool", String(200), nullable=False),
    Column("resource", Text, nullable=False),
    Column("parameters", Text, nullable=False),
    Column("roles", Text, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("status", String(20), nullable=False, index=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True)),
    Column("decided_by", String(200)),
    Column("note", Text),
    Column("request", LargeBinary, nullable=False),
)
inbox = Inbox(inbox_table(metadata, "approvals"))
switches = switches_table(metadata, "approvals")


@dataclass(frozen=True)
class Approval:
    approval_id: str
    run_id: str
    agent: str
    tool: str
    resource: str
    parameters: str
    roles: str
    reasons: str
    status: str
    requested_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    note: str | None


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def add(conn: Connection, request: ApprovalRequested) -> None:
    """Record a pending approval; a second request with the same id is a redelivery."""
    exists = conn.execute(
        select(approvals.c.approval_id).where(approvals.c.approval_id == request.approval_id)
    ).first()
    if exists:
        return
    action = request.action
    conn.execute(
        approvals.insert().values(
            approval_id=request.approval_id,
            run_id=request.envelope.run_id or "",
            agent=request.envelope.agent or "",
            tool=action.tool,
            resource=action.resource,
            parameters=action.model_dump()["parameters"],
            roles=",".join(request.decision.approval_roles),
            reasons="; ".join(request.decision.reasons),
            status="pending",
            requested_at=request.envelope.occurred_at,
            request=serde.encode(request),
        )
    )


def request_of(conn: Connection, approval_id: str) -> tuple[ApprovalRequested | None, str]:
    row = conn.execute(
        select(approvals.c.request, approvals.c.status).where(approvals.c.approval_id == approval_id)
    ).first()
    if row is None:
        return None, "unknown"
    request = serde.decode(row.request)
    if not isinstance(request, ApprovalRequested):
        raise TypeError(f"approval {approval_id} holds a {type(request).__name__}")
    return request, row.status


def decide(
    conn: Connection, approval_id: str, *, status: str, by: str, note: str | None, at: datetime
) -> None:
    conn.execute(
        update(approvals)
        .where(approvals.c.approval_id == approval_id, approvals.c.status == "pending")
        .values(status=status, decided_by=by, note=note, decided_at=at)
    )


def withdraw(conn: Connection, run_id: str, note: str, at: datetime) -> None:
    """Close the run's pending approvals: nobody can decide them any more."""
    conn.execute(
        update(approvals)
        .where(approvals.c.run_id == run_id, approvals.c.status == "pending")
        .values(status="withdrawn", decided_by="charter", note=note, decided_at=at)
    )


def listing(conn: Connection, status: str | None = "pending", limit: int = 200) -> list[Approval]:
    query = select(*(c for c in approvals.c if c.name != "request")).order_by(approvals.c.requested_at)
    if status:
        query = query.where(approvals.c.status == status)
    return [Approval(**row) for row in conn.execute(query.limit(limit)).mappings()]


def find(conn: Connection, prefix: str) -> list[Approval]:
    """Approvals whose id starts with `prefix`, so people can type a short id."""
    query = select(*(c for c in approvals.c if c.name != "request")).where(
        approvals.c.approval_id.startswith(prefix, autoescape=True)
    )
    return [Approval(**row) for row in conn.execute(query.limit(10)).mappings()]
