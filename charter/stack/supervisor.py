"""Keeps the five services running: starts each as its own process, restarts a crashed one
with exponential backoff, and stops them all, by force if need be, within a deadline.

The backoff is for crash loops: a process that dies before it gets ready, again and again. One
that had got ready (or ran for a while) and then died is restarted after the first delay."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from charter.stack.processes import spawn, terminate

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None


def service_argv(name: str) -> list[str]:
    return [sys.executable, "-m", f"services.{name}"]


class Supervisor:
    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        logs_dir: Path,
        env: dict[str, str],
        notify: Callable[[str], None] = print,
        ready: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.children = {n: Child(n, list(argv), logs_dir / f"{n}.log") for n, argv in commands.items()}
        self._env = env
        self._notify = notify
        self._ready = ready
        self._stopping = False

    def start_all(self) -> None:
        for child in self.children.values():
            self._start(child)

    def _start(self, child: Child) -> None:
        child.proc = spawn(child.argv, child.log, self._env)
        child.started_at = time.monotonic()
        child.restart_at = None

    def pids(self) -> dict[str, int | None]:
        return {name: child.pid for name, child in self.children.items()}

    def poll(self) -> None:
        """Notice exits and restart what is due; call it often."""
        now = time.monotonic()
        for child in self.children.values():
            if self._stopping or child.proc is None:
                continue
            code = child.proc.poll()
            if code is not None and child.restart_at is None:
                if (
                    now - child.started_at >= STABLE_AFTER_S
                    or self._ready().get(child.name) == child.proc.pid
                ):
                    child.backoff_s = FIRST_BACKOFF_S
                child.restart_at = now + child.backoff_s
                self._notify(
                    f"{child.name} exited with code {code}; "
                    f"restarting in {child.backoff_s:.1f}s (log: {child.log})"
                )
                child.backoff_s = min(MAX_BACKOFF_S, child.backoff_s * 2)
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)

    def stop_all(self, deadline_s: float = 8.0) -> list[str]:
        """SIGTERM everything, SIGKILL what is still up at the deadline. Returns who was killed."""
        self._stopping = True
        running = [
            (c.name, c.proc) for c in self.children.values() if c.proc is not None and c.proc.poll() is None
        ]
        for _, proc in running:
            terminate(proc, signal.SIGTERM)
        end = time.monotonic() + deadline_s
        killed = []
        for name, proc in running:
            try:
                proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                # A service past its deadline is killed: what it had not committed comes again.
                terminate(proc, signal.SIGKILL)
                proc.wait()
                killed.append(name)
        return killed
