"""The audit log becomes a Merkle tree with signed heads, full attribution and purgeable data.

Rows recorded under the hash chain keep what they had (their new attribution columns are
empty) and get their canonical bytes and leaf hash here, so one tree covers old and new rows.
The chain's columns go: the signed tree heads replace them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from services.audit import record

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


def _backfill() -> None:
    conn = op.get_bind()
    log = sa.table(
        "audit_log",
        *(sa.column(c) for c in ("seq", "meta", "leaf_hash", "value")),
        *(sa.column(f) for f in record.FIELDS),
    )
    rows = conn.execute(sa.select(log).where(log.c.meta.is_(None)).order_by(log.c.seq)).all()
    for row in rows:
        fields = {f: getattr(row, f) for f in record.FIELDS}
        attribution = record.Attribution(**fields)
        meta = record.encode_meta(row.seq, attribution)
        leaf = record.leaf(meta, record.value_digest(bytes(row.value)))
        conn.execute(sa.update(log).where(log.c.seq == row.seq).values(meta=meta, leaf_hash=leaf))


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
