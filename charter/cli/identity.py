"""charter tokens create | list | revoke, and charter keys init.

Tokens are managed here on the machine that holds the approvals store (whoever can write that
store is already its administrator), or through the API by an admin (`/v1/tokens`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from sqlalchemy import Engine

from charter import metrics_server, signing
from charter.cli.output import console, table
from charter.config import Settings
from charter.errors import ConfigError
from charter.identity import tokens
from charter.identity.users import Directory
from charter.store import make_engine

tokens_app = typer.Typer(no_args_is_help=True, help="API tokens: issue, list, revoke.")
keys_app = typer.Typer(
    no_args_is_help=True, help="The signing keys of the policy, approvals and audit services."
)
UNITS = {"m": 60, "h": 3600, "d": 86_400}


def _engine(settings: Settings) -> Engine:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url_for("approvals"))
    tokens.create(engine)
    return engine


def _duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if not match:
        raise ConfigError(f"--expires-in takes a number and m, h or d (90d, 12h), not {text!r}")
    return timedelta(seconds=int(match[1]) * UNITS[match[2]])


@tokens_app.command("create")
def create(
    user: Annotated[str, typer.Option("--user", help="A user in the users file.")],
    role: Annotated[
        list[str] | None, typer.Option("--role", help="Scope to this role (repeatable); default all.")
    ] = None,
    expires_in: Annotated[str | None, typer.Option("--expires-in", help="Lifetime, e.g. 90d or 12h.")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
) -> None:
    """Issue a token to a user, scoped to some of their roles. It is printed once, never stored."""
    settings = Settings()
    person = Directory.load(settings.users_file).get(user)
    if person is None:
        raise ConfigError(f"no user {user!r} in {settings.users_file}")
    roles = role or person.roles
    extra = sorted(set(roles) - set(person.roles))
    if extra:
        raise ConfigError(f"{user} does not hold {', '.join(extra)} (users file: {', '.join(person.roles)})")
    if not roles:
        raise ConfigError(f"{user} holds no roles; a token needs at least one")
    now = datetime.now(UTC)
    expires = now + _duration(expires_in) if expires_in else None
    engine = _engine(settings)
    with engine.begin() as conn:
        record, secret = tokens.issue(
            conn, user_id=user, roles=list(roles), now=now, expires_at=expires, description=description
        )
    console.print(
        f"token {record.token_id} for {user} ({', '.join(record.roles)}); shown once:", markup=False
    )
    print(secret)


@tokens_app.command("list")
def list_tokens() -> None:
    """Every token: whose, which roles, and whether it is active, expired or revoked."""
    now = datetime.now(UTC)
    with _engine(Settings()).connect() as conn:
        rows = tokens.listing(conn)
    if not rows:
        console.print("no tokens")
        return
    table(
        ["token", "user", "roles", "state", "created (UTC)", "expires", "last used", "description"],
        [
            [
                t.token_id,
                t.user_id,
                ",".join(t.roles),
                t.state(now),
                t.created_at.strftime("%Y-%m-%d %H:%M"),
                t.expires_at.strftime("%Y-%m-%d %H:%M") if t.expires_at else "-",
                t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "-",
                t.description or "",
            ]
            for t in rows
        ],
    )


@tokens_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from `charter tokens list`).")],
) -> None:
    """Revoke a token: it stops working at once, everywhere."""
    with _engine(Settings()).begin() as conn:
        if not tokens.revoke(conn, token_id, datetime.now(UTC)):
            raise ConfigError(f"no active token {token_id}")
    console.print(f"token {token_id} revoked")


@keys_app.command("init")
def init() -> None:
    """Create the signing keys that do not exist yet, in CHARTER_KEYS_DIR (default <home>/keys)."""
    settings = Settings()
    created = signing.ensure_keys(settings.keys)
    if not (settings.keys / metrics_server.TOKEN_FILE).exists():
        metrics_server.token(settings)
        created.append("metrics token")
    kept = [n for n in signing.SIGNERS if n not in created]
    console.print(
        f"keys in {settings.keys}: created {', '.join(created) or 'none'}; kept {', '.join(kept) or 'none'}",
        markup=False,
    )


@keys_app.command("show")
def show() -> None:
    """Print each signing key's id (SHA-256 of the public key): what `charter audit verify-bundle
    --key-id` pins, and what others compare before trusting a signature."""
    settings = Settings()
    for name in signing.SIGNERS:
        try:
            key_id = signing.Verifier.load(settings.keys, name).key_id
        except ConfigError:
            key_id = "(none: run `charter keys init`)"
        console.print(f"{name:<10} {key_id}", markup=False)
