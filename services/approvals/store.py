"""Approvals in SQL, so a pending action survives any restart: each request, the decisions
counted or refused on it, and the notifications still to deliver."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    Text,
    bindparam,
    func,
    insert,
    select,
    update,
)

from charter import serde
from charter.clock import as_utc
from charter.events import ApprovalRequested, Approver, canonical_json
from charter.killswitch import switches_table
from charter.store import Inbox, Traces, create_checked, inbox_table
from services.approvals.decide import Pending

metadata = MetaData()
approvals = Table(
    "approvals",
    metadata,
    Column("approval_id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("tenant", String(200), nullable=False, index=True),
    Column("agent", String(200), nullable=False),
    Column("tool", String(200), nullable=False),
    Column("resource", Text, nullable=False),
    Column("parameters", Text, nullable=False),
    Column("roles", Text, nullable=False),
    Column("quorum", Integer, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("action_hash", String(64), nullable=False),
    Column("status", String(20), nullable=False, index=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    Column("decided_at", DateTime(timezone=True)),
    Column("decided_by", String(400)),
    Column("note", Text),
    Column("request", LargeBinary, nullable=False),
)
# Every decision on an approval, counted or refused, keyed by the decision event that made it:
# the API waits here for the outcome of the decision it sent.
decisions = Table(
    "approval_decisions",
    metadata,
    Column("decision_event_id", String(64), primary_key=True),
    Column("approval_id", String(64), nullable=False, index=True),
    Column("approver", String(200), nullable=False),
    Column("attempted", String(20), nullable=False),
    Column("roles", Text, nullable=False),
    Column("outcome", String(20), nullable=False),  # counted | refused
    Column("code", String(40)),
    Column("reason", Text),
    Column("at", DateTime(timezone=True), nullable=False),
)
# Webhook deliveries still owed, written with the event that calls for them (an outbox), so a
# crash or a receiver that is down delays a notification but never loses it.
notifications = Table(
    "approval_notifications",
    metadata,
    Column("notification_id", String(64), primary_key=True),
    Column("kind", String(40), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, index=True),
    Column("claimed_until", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("failed_at", DateTime(timezone=True)),
    Column("last_error", Text),
)
# The trace an approval was requested in, so the human's decision, made later over HTTP,
# continues the run's trace rather than starting one of its own.
traces = Traces(metadata, "approval_traces", "approval_id")
inbox = Inbox(inbox_table(metadata, "approvals"))
switches = switches_table(metadata, "approvals")
STATUSES = ("pending", "approved", "rejected", "amended", "expired", "withdrawn")


@dataclass(frozen=True)
class Approval:
    approval_id: str
    run_id: str
    tenant: str
    agent: str
    tool: str
    resource: str
    parameters: str
    roles: str
    quorum: int
    reasons: str
    action_hash: str
    status: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    note: str | None


@dataclass(frozen=True)
class DecisionRecord:
    decision_event_id: str
    approval_id: str
    approver: str
    attempted: str
    roles: str
    outcome: str
    code: str | None
    reason: str | None
    at: datetime


def _aware(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row with its times as aware UTC (SQLite hands them back naive)."""
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


def _approval(row: Mapping[Any, Any]) -> Approval:
    return Approval(**_aware(row))


def _decision(row: Mapping[Any, Any]) -> DecisionRecord:
    return DecisionRecord(**_aware(row))


def create(engine: Engine) -> None:
    create_checked(engine, metadata)


def add(conn: Connection, request: ApprovalRequested, expires_at: datetime) -> bool:
    """Record a pending approval; False if it was already recorded (a redelivery)."""
    exists = conn.execute(
        select(approvals.c.approval_id).where(approvals.c.approval_id == request.approval_id)
    ).first()
    if exists:
        return False
    action = request.action
    conn.execute(
        approvals.insert().values(
            approval_id=request.approval_id,
            run_id=request.envelope.run_id or "",
            tenant=request.envelope.tenant,
            agent=request.envelope.agent or "",
            tool=action.tool,
            resource=action.resource,
            parameters=canonical_json(action.parameters),
            roles=",".join(request.decision.approval_roles),
            quorum=request.decision.approvals_required,
            reasons="; ".join(request.decision.reasons),
            action_hash=request.action_hash or "",
            status="pending",
            requested_at=request.envelope.occurred_at,
            expires_at=expires_at,
            request=serde.encode(request),
        )
    )
    return True


def pending_of(conn: Connection, approval_id: str) -> Pending | None:
    row = conn.execute(
        select(approvals.c.request, approvals.c.status, approvals.c.expires_at).where(
            approvals.c.approval_id == approval_id
        )
    ).first()
    if row is None:
        return None
    request = serde.decode(row.request)
    if not isinstance(request, ApprovalRequested):
        raise TypeError(f"approval {approval_id} holds a {type(request).__name__}")
    counted = [
        Approver(user=d.approver, roles=[r for r in d.roles.split(",") if r])
        for d in decisions_of(conn, approval_id)
        if d.outcome == "counted" and d.attempted == "approve"
    ]
    return Pending(request, row.status, as_utc(row.expires_at), counted)


def record_decision(
    conn: Connection,
    *,
    decision_event_id: str,
    approval_id: str,
    approver: str,
    attempted: str,
    roles: Sequence[str],
    outcome: str,
    code: str | None,
    reason: str | None,
    at: datetime,
) -> None:
    conn.execute(
        insert(decisions).values(
            decision_event_id=decision_event_id,
            approval_id=approval_id,
            approver=approver,
            attempted=attempted,
            roles=",".join(roles),
            outcome=outcome,
            code=code,
            reason=reason,
            at=at,
        )
    )


def decision_of(conn: Connection, decision_event_id: str) -> DecisionRecord | None:
    row = conn.execute(select(decisions).where(decisions.c.decision_event_id == decision_event_id)).first()
    return None if row is None else _decision(row._mapping)


def decisions_of(conn: Connection, approval_id: str) -> list[DecisionRecord]:
    query = select(decisions).where(decisions.c.approval_id == approval_id).order_by(decisions.c.at)
    return [_decision(row._mapping) for row in conn.execute(query)]


def settle(
    conn: Connection, approval_id: str, *, status: str, by: str, note: str | None, at: datetime
) -> None:
    """Close a pending approval: approved, rejected, amended or expired."""
    conn.execute(
        update(approvals)
        .where(approvals.c.approval_id == approval_id, approvals.c.status == "pending")
        .values(status=status, decided_by=by, note=note, decided_at=at)
    )


# Run for every run that ends, so built once (see charter.store._upsert).
_WITHDRAW = (
    update(approvals)
    .where(approvals.c.run_id == bindparam("run"), approvals.c.status == "pending")
    .values(status="withdrawn", decided_by="charter", note=bindparam("why"), decided_at=bindparam("at"))
)


def withdraw(conn: Connection, run_id: str, note: str, at: datetime) -> None:
    """Close the run's pending approvals: nobody can decide them any more."""
    conn.execute(_WITHDRAW, {"run": run_id, "why": note, "at": at})


def _columns() -> list[Column[object]]:
    return [c for c in approvals.c if c.name != "request"]


def listing(
    conn: Connection,
    status: str | None = "pending",
    limit: int = 200,
    roles: Sequence[str] | None = None,
    tenants: Collection[str] | None = None,
) -> list[Approval]:
    """Approvals, oldest first; with `roles`, only those one of these roles may decide; with
    `tenants`, only those of these tenants."""
    query = select(*_columns()).order_by(approvals.c.requested_at)
    if status:
        query = query.where(approvals.c.status == status)
    if tenants is not None:
        query = query.where(approvals.c.tenant.in_(sorted(tenants)))
    rows = [
        _approval(row) for row in conn.execute(query.limit(limit if roles is None else 10_000)).mappings()
    ]
    if roles is not None:
        rows = [a for a in rows if set(a.roles.split(",")) & set(roles)][:limit]
    return rows


def get(conn: Connection, approval_id: str) -> Approval | None:
    row = conn.execute(select(*_columns()).where(approvals.c.approval_id == approval_id)).mappings().first()
    return None if row is None else _approval(row)


def request_of(conn: Connection, approval_id: str) -> ApprovalRequested | None:
    blob = conn.execute(select(approvals.c.request).where(approvals.c.approval_id == approval_id)).scalar()
    if blob is None:
        return None
    request = serde.decode(blob)
    return request if isinstance(request, ApprovalRequested) else None


def due(conn: Connection, now: datetime, limit: int = 100) -> list[tuple[str, str, datetime]]:
    """Pending approvals past their deadline: (approval id, run id, requested at)."""
    query = (
        select(approvals.c.approval_id, approvals.c.run_id, approvals.c.requested_at)
        .where(approvals.c.status == "pending", approvals.c.expires_at <= now)
        .order_by(approvals.c.expires_at)
        .limit(limit)
    )
    return [(r.approval_id, r.run_id, as_utc(r.requested_at)) for r in conn.execute(query)]


def counts(conn: Connection) -> dict[str, int]:
    query = select(approvals.c.status, func.count()).group_by(approvals.c.status)
    found = {status: int(n) for status, n in conn.execute(query)}
    return {status: found.get(status, 0) for status in STATUSES}


def keep_trace(conn: Connection, approval_id: str, headers: Sequence[tuple[str, bytes]]) -> None:
    traces.keep(conn, approval_id, headers)


def trace_of(conn: Connection, approval_id: str) -> list[tuple[str, bytes]]:
    return traces.of(conn, approval_id)
