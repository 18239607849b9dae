"""Time and ids, injected so that every `decide` function is deterministic.

A service passes `now` into `decide`; ids of output events derive from the id of the input
(`derive_id`), so a redelivered input yields byte-identical outputs that downstream dedupes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Protocol

# Fixed namespace: changing it would change every derived id, and break dedupe across versions.
_NAMESPACE = uuid.UUID("5f0c2b8e-6c1a-4f7e-9a59-8d1f3f2f6c11")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock for tests and replays: returns the time it is set to, advanced by hand."""

    def __init__(self, at: datetime) -> None:
        self._at = at

    def now(self) -> datetime:
        return self._at

    def advance(self, seconds: float) -> None:
        self._at += timedelta(seconds=seconds)


def as_utc(at: datetime) -> datetime:
    """`at` as an aware UTC time; SQLite hands back naive datetimes, which are UTC here."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def derive_id(parent: str, label: str) -> str:
    """The id of the output `label` of the event `parent`: the same inputs give the same id."""
    return str(uuid.uuid5(_NAMESPACE, f"{parent}/{label}"))


def new_id() -> str:
    """A fresh id, for events that enter the system (business events) and nothing else."""
    return str(uuid.uuid4())
