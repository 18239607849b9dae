"""A run's own key, for personal data the audit reads before the run names its subject, and the
subject it is tied to once the run does (so purging the subject purges it too)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("audit_subject_keys") as batch:
        batch.add_column(sa.Column("belongs_to", sa.String(200)))
        batch.create_index("ix_audit_subject_keys_belongs_to", ["belongs_to"])


def downgrade() -> None:
    with op.batch_alter_table("audit_subject_keys") as batch:
        batch.drop_index("ix_audit_subject_keys_belongs_to")
        batch.drop_column("belongs_to")
