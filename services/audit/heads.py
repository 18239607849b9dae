"""One signer and one publisher of tree heads at a time, however many audit replicas share the store.

Each replica appends to the one log, and signs heads over it as it sees it. Without these locks a
replica could sign (or publish) a head over an older view after another replica's larger head:
the heads on `audit.checkpoints` would go backwards.

- Signing happens inside the transaction that appends (or the timer's), which takes the signing
  lock and only then reads the newest head stored. On PostgreSQL that is a transaction-scoped
  advisory lock; on SQLite the database's single writer does the same, and the head is inserted
  only if no head as large is stored, in one statement, so a stale view is refused there too.
- Publishing reads the heads waiting, sends them to the broker and marks them sent, holding the
  publishing lock throughout. It is only tried: a replica that finds it taken leaves its heads to
  the holder or to its own next pass, rather than stalling its consumer behind another's send.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, func, select


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


SIGNING = _key("charter-audit-heads-signing")
PUBLISHING = _key("charter-audit-heads-publishing")


def hold_signing(conn: Connection) -> None:
    """Hold the signing lock until `conn`'s transaction ends (PostgreSQL; see the module's note)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(SIGNING)))


@contextmanager
def publishing(engine: Engine) -> Iterator[Connection | None]:
    """A transaction that holds the publishing lock, or None when another replica holds it. The
    lock is held until the transaction has committed (the marks of what was sent with it)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, conn.begin():
            held = conn.execute(select(func.pg_try_advisory_xact_lock(PUBLISHING))).scalar_one()
            yield conn if held else None
        return
    database = engine.url.database or ""
    if not database or database == ":memory:":
        # One connection's database: no other process can reach it.
        with engine.begin() as conn:
            yield conn
        return
    with Path(f"{database}.audit-publishing.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
