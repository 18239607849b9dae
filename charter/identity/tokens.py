"""API tokens: issued to a user from the users file, scoped to some of their roles, stored
hashed, revocable, optionally expiring, optionally scoped to some of their tenants.

A token reads `chr_<id>_<secret>`. Only the id and the SHA-256 of the secret are stored (the
secret has 256 bits of entropy, so a fast hash is enough, and is compared in constant time);
the token itself is shown once, when issued. What a token may do is the intersection of its
scope with the roles its user holds now, so taking a role from a user takes it from their
tokens too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from charter.clock import as_utc
from charter.store import create_checked

PREFIX = "chr_"
metadata = MetaData()
tokens = Table(
    "api_tokens",
    metadata,
    Column("token_id", String(32), primary_key=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("user_id", String(200), nullable=False, index=True),
    Column("roles", Text, nullable=False),
    # The tenants it may act for, of its user's; empty: all of its user's.
    Column("tenants", Text, nullable=False, default=""),
    Column("description", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)


@dataclass(frozen=True)
class Token:
    token_id: str
    user_id: str
    roles: tuple[str, ...]
    tenants: tuple[str, ...]
    description: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class TokenRejected(Exception):
    """The presented token is not one that may be used now; the message says why."""


def create(engine: Engine) -> None:
    create_checked(engine, metadata)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _token(row: object) -> Token:
    m = row._mapping  # type: ignore[attr-defined]
    return Token(
        token_id=m["token_id"],
        user_id=m["user_id"],
        roles=tuple(r for r in m["roles"].split(",") if r),
        tenants=tuple(t for t in m["tenants"].split(",") if t),
        description=m["description"],
        created_at=as_utc(m["created_at"]),
        expires_at=as_utc(m["expires_at"]) if m["expires_at"] else None,
        revoked_at=as_utc(m["revoked_at"]) if m["revoked_at"] else None,
        last_used_at=as_utc(m["last_used_at"]) if m["last_used_at"] else None,
    )


def issue(
    conn: Connection,
    *,
    user_id: str,
    roles: list[str],
    now: datetime,
    expires_at: datetime | None = None,
    description: str | None = None,
    tenants: list[str] | None = None,
) -> tuple[Token, str]:
    """A new token; returns its record and the token string, which is never stored."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        insert(tokens).values(
            token_id=token_id,
            secret_sha256=_digest(secret),
            user_id=user_id,
            roles=",".join(sorted(set(roles))),
            tenants=",".join(sorted(set(tenants or ()))),
            description=description,
            created_at=now,
            expires_at=expires_at,
        )
    )
    record = find(conn, token_id)
    assert record is not None
    return record, f"{PREFIX}{token_id}_{secret}"


def looks_like(presented: str) -> bool:
    return presented.startswith(PREFIX)


def check(conn: Connection, presented: str, now: datetime) -> Token:
    """The token `presented` names, if it is genuine and usable now; else TokenRejected."""
    token_id, _, secret = presented.removeprefix(PREFIX).partition("_")
    row = conn.execute(select(tokens).where(tokens.c.token_id == token_id)).first() if secret else None
    # Compared even when the id is unknown, so timing says nothing about which ids exist.
    expected = row.secret_sha256 if row is not None else _digest("")
    if not hmac.compare_digest(expected, _digest(secret)) or row is None:
        raise TokenRejected("unknown token")
    token = _token(row)
    state = token.state(now)
    if state != "active":
        raise TokenRejected(f"token {token_id} is {state}")
    conn.execute(update(tokens).where(tokens.c.token_id == token_id).values(last_used_at=now))
    return token


def find(conn: Connection, token_id: str) -> Token | None:
    row = conn.execute(select(tokens).where(tokens.c.token_id == token_id)).first()
    return None if row is None else _token(row)


def listing(conn: Connection, user_id: str | None = None) -> list[Token]:
    query = select(tokens).order_by(tokens.c.created_at)
    if user_id is not None:
        query = query.where(tokens.c.user_id == user_id)
    return [_token(row) for row in conn.execute(query)]


def revoke(conn: Connection, token_id: str, now: datetime) -> bool:
    """Revoke a token; False if there is no such token or it was already revoked."""
    done = conn.execute(
        update(tokens)
        .where(tokens.c.token_id == token_id, tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return done.rowcount == 1
