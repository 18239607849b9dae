"""How a service tells the supervisor it is ready: a file per service replica, written once its
consumer groups have joined and its partitions are assigned. Files, not topics, so readiness
works before (and regardless of) anything on the broker. A replica is a service plus its
CHARTER_INSTANCE, so a second replica started by hand does not pass for the first."""

from __future__ import annotations

import os
import time
from pathlib import Path

from charter.config import Settings

# The services a stack is made of; it is ready when each has said so.
SERVICES = ("audit", "approvals", "executor", "policy", "planner")


def _dir(settings: Settings) -> Path:
    return settings.home / "run" / "ready"


def _name(settings: Settings, service: str) -> str:
    return f"{service}@{settings.instance}"


def mark(settings: Settings, service: str) -> None:
    directory = _dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{_name(settings, service)}.tmp"
    tmp.write_text(f"{os.getpid()} {time.time()}\n")
    tmp.replace(directory / _name(settings, service))


def clear(settings: Settings, service: str | None = None) -> None:
    directory = _dir(settings)
    if not directory.exists():
        return
    for path in directory.iterdir():
        if service is None or path.name == _name(settings, service):
            path.unlink(missing_ok=True)


def ready_pids(settings: Settings) -> dict[str, int]:
    """Service name -> pid of this instance's process that said it was ready."""
    directory = _dir(settings)
    if not directory.exists():
        return {}
    suffix = f"@{settings.instance}"
    out: dict[str, int] = {}
    for path in directory.iterdir():
        if path.name.startswith(".") or not path.name.endswith(suffix):
            continue
        try:
            out[path.name.removesuffix(suffix)] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def all_ready(settings: Settings) -> bool:
    """Every service of this instance said it was ready, and that process still runs."""
    live = ready_pids(settings)
    return all(_alive(live.get(name)) for name in SERVICES)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it runs
    return True
