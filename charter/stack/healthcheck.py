"""A container's healthcheck: `python -m charter.stack.healthcheck <service>` exits 0 when that
service, under this container's CHARTER_HOME and CHARTER_INSTANCE, has said it is ready (its
consumer groups joined, its partitions assigned) and its process still runs; 1, saying why,
otherwise. It needs no broker, no token and no network."""

from __future__ import annotations

import os
import sys

from charter.config import Settings
from charter.stack import readiness


def healthy(settings: Settings, service: str) -> str | None:
    """None when `service` is ready and alive, else why not."""
    if service not in readiness.SERVICES:
        return f"no service {service!r}: one of {', '.join(readiness.SERVICES)}"
    pid = readiness.ready_pids(settings).get(service)
    if pid is None:
        return f"{service}@{settings.instance} has not said it is ready"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"{service}@{settings.instance} said it was ready, but its process {pid} is gone"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m charter.stack.healthcheck <service>", file=sys.stderr)
        return 2
    problem = healthy(Settings(), argv[1])
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
