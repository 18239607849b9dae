"""charter tokens create | list | revoke

Through the API, as an admin (CHARTER_TOKEN, or the operator token `charter up` made), so the
store is changed only by someone the API authenticated. `--offline` writes the approvals store
directly: the stack operator's way to issue the very first token when the users file names no
admin, or to revoke one with the API down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import Engine

from charter.api_client import ApiClient
from charter.cli import formats
from charter.cli.output import console, table
from charter.config import Settings
from charter.errors import ConfigError, NotFound
from charter.identity import tokens
from charter.identity.principal import beyond, granted
from charter.identity.users import Directory
from charter.store import make_engine

tokens_app = typer.Typer(no_args_is_help=True, help="API tokens: issue, list, revoke (as an admin).")
UNITS = {"m": 60, "h": 3600, "d": 86_400}
Offline = Annotated[
    bool,
    typer.Option("--offline", help="Without the API: the approvals store directly (the stack operator)."),
]


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
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", help="Scope to this tenant of the user's (repeatable); default all."),
    ] = None,
    expires_in: Annotated[str | None, typer.Option("--expires-in", help="Lifetime, e.g. 90d or 12h.")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    offline: Offline = False,
) -> None:
    """Issue a token to a user, scoped to some of their roles (and tenants). It is printed once,
    never stored."""
    settings = Settings()
    lifetime = _duration(expires_in) if expires_in else None
    if offline:
        token_id, roles, secret = _create_offline(settings, user, Scope(role, tenant), lifetime, description)
    else:
        body: dict[str, Any] = {
            "user": user,
            "roles": role or None,
            "tenants": tenant or None,
            "description": description,
        }
        if lifetime is not None:
            body["expires_in_s"] = int(lifetime.total_seconds())
        with ApiClient.from_settings(settings) as api:
            issued = api.post("/v1/tokens", body)
        token_id, roles, secret = issued["token_id"], issued["roles"], issued["token"]
    console.print(f"token {token_id} for {user} ({', '.join(roles)}); shown once:", markup=False)
    print(secret)


@dataclass(frozen=True)
class Scope:
    roles: list[str] | None
    tenants: list[str] | None


def _create_offline(
    settings: Settings, user: str, scope: Scope, lifetime: timedelta | None, description: str | None
) -> tuple[str, list[str], str]:
    person = Directory.load(settings.users_file).get(user)
    if person is None:
        raise NotFound(f"no user {user!r} in {settings.users_file}")
    roles = scope.roles or person.roles
    extra = sorted(set(roles) - set(person.roles))
    if extra:
        raise ConfigError(f"{user} does not hold {', '.join(extra)} (users file: {', '.join(person.roles)})")
    if not roles:
        raise ConfigError(f"{user} holds no roles; a token needs at least one")
    outside = beyond(granted(person.tenants, settings.tenant), scope.tenants or ())
    if outside:
        raise ConfigError(f"{user} does not act for {', '.join(outside)}")
    now = datetime.now(UTC)
    with _engine(settings).begin() as conn:
        record, secret = tokens.issue(
            conn,
            user_id=user,
            roles=list(roles),
            now=now,
            expires_at=now + lifetime if lifetime else None,
            description=description,
            tenants=scope.tenants,
        )
    return record.token_id, list(record.roles), secret


def _when(value: str | datetime | None) -> str:
    if value is None:
        return "-"
    at = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return at.strftime("%Y-%m-%d %H:%M")


COLUMNS = [
    "token",
    "user",
    "roles",
    "tenants",
    "state",
    "created (UTC)",
    "expires",
    "last used",
    "description",
]


@tokens_app.command("list")
def list_tokens(offline: Offline = False) -> None:
    """Every token: whose, which roles, and whether it is active, expired or revoked."""
    settings = Settings()
    if offline:
        now = datetime.now(UTC)
        with _engine(settings).connect() as conn:
            rows: list[dict[str, Any]] = [
                {
                    "token_id": t.token_id,
                    "user": t.user_id,
                    "roles": t.roles,
                    "tenants": t.tenants,
                    "state": t.state(now),
                    "created_at": t.created_at,
                    "expires_at": t.expires_at,
                    "last_used_at": t.last_used_at,
                    "description": t.description,
                }
                for t in tokens.listing(conn)
            ]
    else:
        with ApiClient.from_settings(settings) as api:
            rows = api.get("/v1/tokens")["tokens"]

    def text() -> None:
        if not rows:
            console.print("no tokens")
            return
        table(
            COLUMNS,
            [
                [
                    t["token_id"],
                    t["user"],
                    ",".join(t["roles"]),
                    ",".join(t["tenants"]) or "all",
                    t["state"],
                    _when(t["created_at"]),
                    _when(t["expires_at"]),
                    _when(t["last_used_at"]),
                    t["description"] or "",
                ]
                for t in rows
            ],
        )

    formats.listing(rows, text)


@tokens_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from `charter tokens list`).")],
    offline: Offline = False,
) -> None:
    """Revoke a token: it stops working at once, everywhere."""
    settings = Settings()
    if offline:
        with _engine(settings).begin() as conn:
            if not tokens.revoke(conn, token_id, datetime.now(UTC)):
                raise NotFound(f"no active token {token_id}")
    else:
        with ApiClient.from_settings(settings) as api:
            api.call("DELETE", f"/v1/tokens/{token_id}")
    console.print(f"token {token_id} revoked")
