"""The roots of every complete block of 256 leaves, so proofs at scale read thousands of rows
rather than millions. Built here for the rows already in the log."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.audit.store import TILE, perfect_root

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    tiles = op.create_table(
        "audit_tiles",
        sa.Column("tile", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
    )
    assert tiles is not None
    conn = op.get_bind()
    log = sa.table("audit_log", sa.column("seq"), sa.column("leaf_hash"))
    size = conn.execute(sa.select(sa.func.coalesce(sa.func.max(log.c.seq), 0))).scalar_one()
    for tile in range(size // TILE):
        block = conn.execute(
            sa.select(log.c.leaf_hash)
            .where(log.c.seq > tile * TILE, log.c.seq <= (tile + 1) * TILE)
            .order_by(log.c.seq)
        ).scalars()
        conn.execute(tiles.insert().values(tile=tile, root=perfect_root([bytes(h) for h in block])))
