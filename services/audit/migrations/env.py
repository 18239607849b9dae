"""Alembic's entry point: migrations run on the connection `upgrade` hands over."""

from __future__ import annotations

from alembic import context

from services.audit.migrations import VERSION_TABLE

context.configure(
    connection=context.config.attributes["connection"],
    version_table=VERSION_TABLE,
    # SQLite alters tables by copying them; batch mode does that where needed.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
