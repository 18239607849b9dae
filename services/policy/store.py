"""What the policy service remembers: live-limit usage, kill switches, and the decisions it made.

Replicas share it. Each batch of proposals is decided inside one serialized transaction (see
charter.store.serialized) that loads the counters it needs, and writes back the counters it
changed and the inbox records of its decisions together.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
)

from charter.killswitch import switches_table
from charter.store import Inbox, inbox_table, upsert_many
from services.policy.limits import CounterKey, Usage

metadata = MetaData()
counters = Table(
    "policy_counters",
    metadata,
    Column("kind", String(20), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("window", String(80), primary_key=True),
    Column("value", Float, nullable=False),
)
# Each human approval lets one action through: the approvals already used, and by which event.
used_approvals = Table(
    "policy_used_approvals",
    metadata,
    Column("approval_id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=False),
)
inbox = Inbox(inbox_table(metadata, "policy"))
switches = switches_table(metadata, "policy")
LOCK = "policy-limits"


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def load_usage(conn: Connection, keys: Iterable[CounterKey]) -> Usage:
    """The counters of `keys`, found through the primary key's (kind, key) prefix: a row-value
    IN over all three columns is a scan of the whole table on SQLite, and the table holds a
    counter for every run there ever was, so each batch got slower by the minute."""
    usage = Usage()
    wanted = set(keys)
    by_kind: dict[str, set[str]] = {}
    for kind, key, _ in wanted:
        by_kind.setdefault(kind, set()).add(key)
    for kind, found in sorted(by_kind.items()):
        names = sorted(found)
        for start in range(0, len(names), 300):
            chunk = names[start : start + 300]
            query = select(counters).where(counters.c.kind == kind, counters.c.key.in_(chunk))
            for row in conn.execute(query):
                if (row.kind, row.key, row.window) in wanted:
                    usage.counters[(row.kind, row.key, row.window)] = row.value
    return usage


def save_usage(conn: Connection, usage: Usage) -> None:
    rows = [
        {"kind": kind, "key": key, "window": window, "value": usage.counters[(kind, key, window)]}
        for kind, key, window in sorted(usage.touched)
    ]
    upsert_many(conn, counters, rows, ("kind", "key", "window"))
    # A rate's windows older than the previous one are never read again.
    for _, scope, window in {k for k in usage.touched if k[0] == "rate"}:
        older = f"{int(window) - 1:012d}"
        conn.execute(
            delete(counters).where(
                counters.c.kind == "rate", counters.c.key == scope, counters.c.window < older
            )
        )


def counter_value(conn: Connection, kind: str, key: str, window: str) -> float:
    query = select(counters.c.value).where(
        counters.c.kind == kind, counters.c.key == key, counters.c.window == window
    )
    return float(conn.execute(query).scalar() or 0.0)


def approval_used(conn: Connection, approval_id: str) -> bool:
    query = select(used_approvals.c.approval_id).where(used_approvals.c.approval_id == approval_id)
    return conn.execute(query).first() is not None


def use_approval(conn: Connection, approval_id: str, event_id: str, at: datetime) -> None:
    conn.execute(insert(used_approvals).values(approval_id=approval_id, event_id=event_id, used_at=at))
