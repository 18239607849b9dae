"""The tests' scripted model server (tests/e2e/model_server.py) in a process of its own, and
what a test asks of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from charter.stack.harness import wait_answering
from charter.stack.processes import free_port
from tests.conftest import REPO


class ModelServer:
    """`args`: more of the server's own options (say, `--barrier 10`)."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                *("timeout", "-s", "KILL", "1800", sys.executable, "-m", "tests.e2e.model_server"),
                *("--port", str(self.port), "--log", str(log), *args),
            ],
            cwd=REPO,
        )
        wait_answering(f"{self.url}/health", self.proc, timeout_s=20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self, trigger_id: str) -> list[dict[str, Any]]:
        """What the planner sent for the run this trigger started."""
        lines = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        return [r for r in lines if f"id {trigger_id}," in r["body"]["messages"][1]["content"]]

    def stats(self) -> dict[str, Any]:
        """How many calls it took and the most it ever held at once."""
        answer: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()
        return answer

    def stop(self) -> None:
        # SIGTERM: `timeout` passes it on to the server; SIGKILL would orphan the server.
        self.proc.terminate()
        self.proc.wait(10)
