"""The stack under test: `charter up` in a fresh home, configured for the load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from charter.config import Settings
from charter.stack import readiness
from charter.stack.harness import StackProcess
from charter.stack.processes import free_port, free_ports, spawn
from charter.stack.readiness import SERVICES

REPO = Path(__file__).resolve().parents[2]
LIMITS = """defaults:
  max_steps: 20
  loop_threshold: 3
  budget_per_run: 50
  budget_per_day: 1000000000
  rate: {count: 1000000000, per_seconds: 60}
"""


class Stack(StackProcess):
    """`charter up` as StackProcess runs it, but dying with this process even by SIGKILL (a
    `timeout -s KILL` around the benchmark), so a bounded run leaves no stack behind."""

    def __init__(self, home: Path, env: dict[str, str], *args: str) -> None:
        self.home, self.env, self.output = home, env, home / "up.out"
        self.proc = spawn([sys.executable, "-m", "charter", "up", *args], self.output, env)

    def pids(self, settings: Settings) -> dict[str, int]:
        """Each process to sample: the five services, the broker, the supervisor, this one."""
        pids = readiness.ready_pids(settings)
        broker = json.loads(settings.stack_file.read_text()).get("broker_pid")
        if broker:
            pids["broker"] = int(broker)
        return {**pids, "supervisor": self.proc.pid, "bench client": os.getpid()}

    def close(self) -> None:
        """Stop it (killed if it will not stop; its services and broker die with it) and remove
        its home."""
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def configure(home: Path, agents: list[Path] | None = None) -> Path:
    """`home`/config: some agents (the bench's own by default), and the product's policies with
    limits wide enough for the load."""
    config = home / "config"
    (config / "agents").mkdir(parents=True)
    for agent in agents or sorted((REPO / "bench" / "agents").glob("*.yaml")):
        shutil.copy(agent, config / "agents" / agent.name)
    shutil.copytree(REPO / "policies", config / "policies")
    (config / "policies" / "limits.yaml").write_text(LIMITS)
    return config


def _env(home: Path, telemetry: bool, agents: list[Path] | None = None) -> dict[str, str]:
    config = configure(home, agents)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env.update(
        CHARTER_HOME=str(home),
        CHARTER_AGENTS_DIR=str(config / "agents"),
        CHARTER_POLICIES_DIR=str(config / "policies"),
        CHARTER_USERS_FILE=str(REPO / "users.yaml"),
        CHARTER_API_PORT=str(free_port()),
        CHARTER_METRICS_PORT=str(free_ports(len(SERVICES))),
        PYTHONUNBUFFERED="1",
    )
    if not telemetry:
        env.update(CHARTER_TRACE_EXPORTER="none", CHARTER_METRICS_PORT="0")
    return env
