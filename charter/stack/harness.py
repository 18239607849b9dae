"""`charter up` as a child process, for the end-to-end tests and the benchmarks."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


class StackNotReady(RuntimeError):
    pass


def wait_answering(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until `url` answers 2xx, from a server `proc` started; StackNotReady if it exits
    or the time runs out first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise StackNotReady(f"{url}: the server exited with code {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise StackNotReady(f"{url} did not answer within {timeout_s:g}s") from None
            time.sleep(0.1)


class StackProcess:
    def __init__(self, home: Path, env: dict[str, str], *args: str) -> None:
        self.home = home
        self.env = env
        self.output = home / "up.out"
        home.mkdir(parents=True, exist_ok=True)
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "charter", "up", *args], stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def text(self) -> str:
        return self.output.read_text()

    def wait_ready(self, timeout_s: float = 60) -> float:
        """Seconds `charter up` reported to get ready."""
        deadline = time.monotonic() + timeout_s
        while (match := re.search(r"ready in ([\d.]+)s", self.text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text()[-3000:]}"
                    for p in sorted((self.home / "logs").glob("*.log"))
                )
                raise StackNotReady(f"charter up did not get ready:\n{self.text()}\n{logs}")
            time.sleep(0.05)
        return float(match.group(1))

    def stop(self, timeout_s: float = 15) -> float:
        """Stop as Ctrl-C would; seconds it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout_s)
        return time.monotonic() - started
