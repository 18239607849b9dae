"""The audit store's schema, as Alembic migrations, applied by the service (and the CLI) at start.

`upgrade` runs under the store's cross-process lock, so replicas and the CLI starting together
do not race to create the same tables. A database made before Alembic (by `create_all`, with
the hash chain) is stamped with the first revision and then migrated like any other.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, inspect

from charter.store import serialized

VERSION_TABLE = "audit_alembic_version"
LEGACY = "0001"


def config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    with serialized(engine, "audit-migrations") as conn:
        cfg = config(conn)
        tables = set(inspect(conn).get_table_names())
        if "audit_log" in tables and VERSION_TABLE not in tables:
            command.stamp(cfg, LEGACY)
        command.upgrade(cfg, revision)
