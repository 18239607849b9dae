"""The audit log becomes a Merkle tree with signed heads, full attribution and purgeable data.

Rows recorded under the hash chain keep what they had (their new attribution columns are
empty) and get their canonical bytes and leaf hash here, so one tree covers old and new rows.
The chain's columns go: the signed tree heads replace them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

NEW: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("actor", sa.String(200)),
    ("service", sa.String(200)),
    ("host", sa.String(255)),
    ("source", sa.String(400)),
    ("outcome", sa.String(100)),
    ("policy_hash", sa.String(64)),
    ("trace_id", sa.String(32)),
    ("subject", sa.String(200)),
    ("meta", sa.LargeBinary()),
    ("value_digest", sa.LargeBinary(32)),
    ("leaf_hash", sa.LargeBinary(32)),
)


# Frozen here as they were at this revision: a migration must do tomorrow what it did today,
# whatever the application code becomes.
FIELDS = (
    "event_id", "event_type", "run_id", "agent", "actor", "tenant", "occurred_at", "recorded_at_us",
    "topic", "partition", "offset", "service", "host", "source", "outcome", "policy_hash", "trace_id",
    "subject",
)  # fmt: skip
CHAIN = ("seq", "event_id", "event_type", "run_id", "topic", "partition", "offset", "recorded_at_us", "value")
PAGE = 5_000
ADDED = ("actor", "service", "host", "source", "outcome", "policy_hash", "trace_id", "subject")


def _chain_hash(prev: bytes, row: Any) -> bytes:
    """The hash chain's row hash (the schema before this revision)."""
    digest = hashlib.sha256(prev)
    for name in CHAIN:
        value = getattr(row, name)
        field = bytes(value) if name == "value" else str(value if value is not None else "").encode()
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.digest()


def _meta(seq: int, row: Any) -> bytes:
    # What the chain recorded; the attribution it did not know is empty.
    values = [None if f in ADDED else getattr(row, f) for f in FIELDS]
    at = row.occurred_at
    if at is not None:
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        values[FIELDS.index("occurred_at")] = at.isoformat(timespec="microseconds")
    return b"%d\n" % seq + json.dumps(values, separators=(",", ":"), ensure_ascii=True).encode()


def _backfill() -> None:
    """Check the old chain, then give each row its canonical bytes and leaf. A broken chain
    stops the migration: new leaves over tampered rows would make them verify."""
    conn = op.get_bind()
    log = sa.table(
        "audit_log",
        sa.column("seq", sa.BigInteger),
        sa.column("event_id", sa.String),
        sa.column("event_type", sa.String),
        sa.column("run_id", sa.String),
        sa.column("agent", sa.String),
        sa.column("tenant", sa.String),
        sa.column("topic", sa.String),
        sa.column("partition", sa.Integer),
        sa.column("offset", sa.BigInteger),
        sa.column("occurred_at", sa.DateTime(timezone=True)),
        sa.column("recorded_at_us", sa.BigInteger),
        sa.column("value", sa.LargeBinary),
        sa.column("prev_hash", sa.LargeBinary),
        sa.column("hash", sa.LargeBinary),
        sa.column("meta", sa.LargeBinary),
        sa.column("leaf_hash", sa.LargeBinary),
    )
    prev, expected, after = bytes(32), 1, 0
    while rows := conn.execute(sa.select(log).where(log.c.seq > after).order_by(log.c.seq).limit(PAGE)).all():
        for row in rows:
            fine = (
                row.seq == expected
                and bytes(row.prev_hash) == prev
                and _chain_hash(prev, row) == bytes(row.hash)
            )
            if not fine:
                raise RuntimeError(
                    f"the audit log's hash chain is broken at row {row.seq}: it is not migrated, since "
                    "new leaves would make tampered rows verify; restore the audit store from a backup"
                )
            meta = _meta(row.seq, row)
            leaf = hashlib.sha256(b"\x00" + meta + hashlib.sha256(bytes(row.value)).digest()).digest()
            conn.execute(sa.update(log).where(log.c.seq == row.seq).values(meta=meta, leaf_hash=leaf))
            prev, expected = bytes(row.hash), expected + 1
        after = rows[-1].seq


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        for name, type_ in NEW:
            batch.add_column(sa.Column(name, type_))
        batch.create_index("ix_audit_log_subject", ["subject"])
    _backfill()
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("meta", existing_type=sa.LargeBinary, nullable=False)
        batch.alter_column("leaf_hash", existing_type=sa.LargeBinary(32), nullable=False)
        batch.alter_column("value", existing_type=sa.LargeBinary, nullable=True)
        batch.drop_column("prev_hash")
        batch.drop_column("hash")
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("signed_at_us", sa.BigInteger, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
    )
    op.create_table(
        "audit_subject_keys",
        sa.Column("subject", sa.String(200), primary_key=True),
        sa.Column("key", sa.LargeBinary(32)),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("purged_at_us", sa.BigInteger),
        sa.Column("purged_by", sa.String(200)),
    )
