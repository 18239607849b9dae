"""Starting child processes that cannot outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGKILL to this child when its parent dies, even by SIGKILL,
    # so a crashed `charter up` leaves no orphaned services or broker behind.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = log.open("ab")
    try:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: Ctrl-C reaches the supervisor only
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run when we spawn
        )
    finally:
        out.close()


def terminate(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the child's whole process group, so anything it started goes too."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the child's group, and SIGKILL it if it has not exited after `grace_s`."""
    terminate(proc, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        terminate(proc, signal.SIGKILL)
        proc.wait()


# A port found free is bound by its server a moment later. Ports the kernel hands out itself
# (bind to 0) lie in its ephemeral range, from which every outgoing connection also takes its
# local port: the Kafka clients of a starting stack can take it first ("Address already in
# use"). So ports are drawn at random from outside that range, where no connection lands; on a
# machine whose range leaves no room, from the kernel, as before.
_LOW_PORT = 10_000
_PORTS = 65_536


def _ephemeral() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def _candidate(count: int) -> int:
    low, high = _ephemeral()
    ranges = [(lo, hi - count) for lo, hi in ((_LOW_PORT, low), (high + 1, _PORTS)) if hi - count > lo]
    if not ranges:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    lo, hi = random.choice(ranges)  # noqa: S311 (a port, not a secret)
    return random.randrange(lo, hi)  # noqa: S311


def free_port() -> int:
    return free_ports(1)


def free_ports(count: int, attempts: int = 200) -> int:
    """The first of `count` consecutive ports free now (the services' metrics ports)."""
    for _ in range(attempts):
        first = _candidate(count)
        if first + count > _PORTS:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"found no {count} consecutive free ports")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
