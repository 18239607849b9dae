"""Retention per tenant: event bytes older than the tenant's period are removed from the log.

What stays is the record's attribution (who, what, when, where, outcome) and the digest of the
bytes removed, so every leaf, head and proof still verifies. `default` covers the tenants not
named. Retention is applied by `charter audit retention`, from a scheduler of the operator's.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, and_, func, not_, or_, select, update

from charter.errors import ConfigError
from services.audit.store import log_table

DEFAULT = "default"
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "y": timedelta(days=365)}
_RULE = re.compile(r"^\s*([^=\s]+)\s*=\s*(\d+)\s*([hdy])\s*$")
BATCH = 2_000


def parse(text: str) -> dict[str, timedelta]:
    rules = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RULE.match(part)
        if not match:
            raise ConfigError(f"retention rule {part!r} is not tenant=<number><h|d|y>, e.g. acme=90d")
        tenant, number, unit = match.groups()
        rules[tenant] = int(number) * _UNITS[unit]
    return rules


def apply(
    engine: Engine, rules: dict[str, timedelta], now: datetime, *, dry_run: bool = False
) -> dict[str, int]:
    """Remove the expired event bytes; return how many records each tenant had removed."""
    named = [t for t in rules if t != DEFAULT]
    removed: dict[str, int] = {}
    for tenant, period in rules.items():
        cutoff_us = int((now - period).timestamp() * 1_000_000)
        whose = (
            or_(log_table.c.tenant.is_(None), not_(log_table.c.tenant.in_(named)))
            if tenant == DEFAULT
            else log_table.c.tenant == tenant
        )
        expired = and_(whose, log_table.c.recorded_at_us < cutoff_us, log_table.c.value.is_not(None))
        count = _remove(engine, expired, dry_run)
        if count:
            removed[tenant] = count
    return removed


def _remove(engine: Engine, expired: ColumnElement[bool], dry_run: bool) -> int:
    if dry_run:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(log_table).where(expired)).scalar_one())
    count = 0
    while True:
        with engine.begin() as conn:
            page = conn.execute(
                select(log_table.c.seq, log_table.c.value)
                .where(expired)
                .order_by(log_table.c.seq)
                .limit(BATCH)
            ).all()
            if not page:
                return count
            for seq, value in page:
                conn.execute(
                    update(log_table)
                    .where(log_table.c.seq == seq)
                    .values(value=None, value_digest=hashlib.sha256(bytes(value)).digest())
                )
            count += len(page)
