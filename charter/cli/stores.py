"""Opening a service's store for the CLI to read, with a clear error when there is none yet."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from charter.config import Settings
from charter.errors import ConfigError, NotFound, Unavailable
from charter.store import make_engine


def open_store(settings: Settings, service: str) -> Engine:
    url = settings.database_url_for(service)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise Unavailable(
                f"no {service} store at {path}; has the stack run with CHARTER_HOME={settings.home}?"
            )
    return make_engine(url)


def resolve_id(candidates: list[str], prefix: str, what: str) -> str:
    """One id from a unique prefix, as people type them."""
    if len(prefix) < 4:
        raise ConfigError(f"give at least 4 characters of the {what} id")
    if not candidates:
        raise NotFound(f"no {what} with an id starting {prefix!r}")
    if len(candidates) > 1:
        raise ConfigError(f"{len(candidates)} {what}s have ids starting {prefix!r}; give more characters")
    return candidates[0]
