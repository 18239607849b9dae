"""What the policy service remembers: live-limit usage, kill switches, and the decisions it made.

Replicas share it. Each batch of proposals is decided inside one serialized transaction (see
charter.store.serialized) that loads the usage it needs, and writes back the counters, the
rate-window entries and the inbox records of the decisions together.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    delete,
    or_,
    select,
    tuple_,
)

from charter.killswitch import switches_table
from charter.store import Inbox, inbox_table, upsert
from services.policy.limits import RATE_HISTORY_S, CounterKey, Usage, WindowKey

metadata = MetaData()
counters = Table(
    "policy_counters",
    metadata,
    Column("kind", String(20), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("window", String(80), primary_key=True),
    Column("value", Float, nullable=False),
)
calls = Table(
    "policy_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String(10), nullable=False),
    Column("key", String(200), nullable=False),
    Column("at", Float, nullable=False),
    Index("policy_calls_scope_key_at", "scope", "key", "at"),
)
inbox = Inbox(inbox_table(metadata, "policy"))
switches = switches_table(metadata, "policy")
LOCK = "policy-limits"


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def load_usage(
    conn: Connection, keys: Iterable[CounterKey], windows: Iterable[WindowKey], now: datetime
) -> Usage:
    usage = Usage()
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), 300):
        chunk = wanted[start : start + 300]
        rows = conn.execute(
            select(counters).where(tuple_(counters.c.kind, counters.c.key, counters.c.window).in_(chunk))
        )
        for row in rows:
            usage.counters[(row.kind, row.key, row.window)] = row.value
    scopes = sorted(set(windows))
    if scopes:
        since = now.timestamp() - RATE_HISTORY_S
        condition = or_(*(and_(calls.c.scope == s, calls.c.key == k) for s, k in scopes))
        for row in conn.execute(
            select(calls.c.scope, calls.c.key, calls.c.at).where(condition, calls.c.at > since)
        ):
            usage.calls.setdefault((row.scope, row.key), []).append(row.at)
    return usage


def save_usage(conn: Connection, usage: Usage, now: datetime) -> None:
    for kind, key, window in sorted(usage.touched):
        upsert(
            conn,
            counters,
            {"kind": kind, "key": key, "window": window, "value": usage.counters[(kind, key, window)]},
            ("kind", "key", "window"),
        )
    if usage.new_calls:
        conn.execute(calls.insert(), [{"scope": s, "key": k, "at": at} for s, k, at in usage.new_calls])
        scopes = {(s, k) for s, k, _ in usage.new_calls}
        old = now.timestamp() - RATE_HISTORY_S
        conn.execute(
            delete(calls).where(
                or_(*(and_(calls.c.scope == s, calls.c.key == k) for s, k in scopes)), calls.c.at < old
            )
        )


def counter_value(conn: Connection, kind: str, key: str, window: str) -> float:
    value = conn.execute(
        select(counters.c.value).where(
            counters.c.kind == kind, counters.c.key == key, counters.c.window == window
        )
    ).scalar()
    return float(value or 0.0)
