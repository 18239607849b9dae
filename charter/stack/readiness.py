"""How a service tells the supervisor it is ready: a file per service, written once its
consumer group has joined and its partitions are assigned. Files, not topics, so readiness
works before (and regardless of) anything on the broker."""

from __future__ import annotations

import os
import time
from pathlib import Path

from charter.config import Settings


def _dir(settings: Settings) -> Path:
    return settings.home / "run" / "ready"


def mark(settings: Settings, service: str) -> None:
    directory = _dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{service}.tmp"
    tmp.write_text(f"{os.getpid()} {time.time()}\n")
    tmp.replace(directory / service)


def clear(settings: Settings, service: str | None = None) -> None:
    directory = _dir(settings)
    if not directory.exists():
        return
    for path in directory.iterdir():
        if service is None or path.name == service:
            path.unlink(missing_ok=True)


def ready_pids(settings: Settings) -> dict[str, int]:
    """Service name -> pid of the process that said it was ready."""
    directory = _dir(settings)
    if not directory.exists():
        return {}
    out: dict[str, int] = {}
    for path in directory.iterdir():
        if path.name.startswith("."):
            continue
        try:
            out[path.name] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out
