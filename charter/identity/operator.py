"""The stack operator's first admin token, which `charter up` makes so a fresh stack can be used
at once, through the API, as a person the users file names.

It is issued to the first admin in the users file and kept in `<keys>/operator.token` (0600),
beside the signing keys, on the machine that already holds the stores. The CLI uses it when
CHARTER_TOKEN is unset, so every act still goes through the API as that person, and the audit
names them. A token revoked or lost from the store is replaced at the next start.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from charter.config import Settings
from charter.errors import ConfigError
from charter.identity import tokens
from charter.identity.users import Directory

TOKEN_FILE = "operator.token"  # noqa: S105 (a file name)
DESCRIPTION = "charter up: the operator's first admin token"


def path(settings: Settings) -> Path:
    return settings.keys / TOKEN_FILE


def saved(settings: Settings) -> str | None:
    """The operator token `charter up` made, if this machine holds it."""
    try:
        return path(settings).read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


def ensure(settings: Settings, engine: Engine) -> str | None:
    """Make the operator's token unless a usable one is saved; the user it names, or None when
    the users file names no admin (then tokens are issued with `charter tokens create --offline`)."""
    try:
        admins = [
            u for u in Directory.load(settings.users_file).users() if "admin" in u.roles and not u.disabled
        ]
    except ConfigError:
        return None
    if not admins:
        return None
    now = datetime.now(UTC)
    tokens.create(engine)
    with engine.begin() as conn:
        current = saved(settings)
        if current is not None:
            try:
                return tokens.check(conn, current, now).user_id
            except tokens.TokenRejected:
                pass  # revoked or from another store: make a new one
        record, secret = tokens.issue(
            conn, user_id=admins[0].id, roles=["admin"], now=now, description=DESCRIPTION
        )
    target = path(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{TOKEN_FILE}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    tmp.replace(target)
    return record.user_id
