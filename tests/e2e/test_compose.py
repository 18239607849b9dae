"""docker-compose.yml with the demo override, run without a Docker engine: each Charter service's
own command and environment, as docker-compose reads them, started as a process against the test
suite's Apache Kafka and PostgreSQL. Only what a container's network and volumes would give is
mapped to this machine: the hosts kafka and postgres, the /config and /keys mounts, a home per
container, and free ports for the published ones. Its healthchecks say when it is up, and a
governed run goes through it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from charter.client import Client
from charter.config import Settings
from charter.events import RunCompleted, RunFailed
from charter.stack.kafka import LocalKafka
from charter.stack.processes import free_port, free_ports
from charter.stack.readiness import SERVICES
from charter.store import make_engine
from services.audit import store as audit_store
from tests.compose_files import BASE, DEMO, compose_config
from tests.e2e.conftest import run_id

pytestmark = pytest.mark.e2e

CHARTER_BIN = Path(sys.executable).parent


def _on_this_machine(
    env: dict[str, Any], volumes: list[str], kafka: str, database: str, work: Path
) -> dict[str, str]:
    """A container's environment, with what its network and mounts would give mapped here."""
    mounts = {v.split(":")[1]: v.split(":")[0] for v in volumes if v.count(":") >= 1}
    keys = work / "keys"
    out = {}
    for name, value in env.items():
        text = str(value)
        if name == "CHARTER_BOOTSTRAP_SERVERS":
            text = kafka
        elif name == "CHARTER_DATABASE_URL":
            text = database
        elif name == "CHARTER_KEYS_DIR":
            text = str(keys)
        elif text.startswith("/config") and "/config" in mounts:  # (keys and topics mount none)
            text = mounts["/config"] + text.removeprefix("/config")
        out[name] = text
    return out


def _command(argv: list[str]) -> list[str]:
    program = {"python": sys.executable, "charter": str(CHARTER_BIN / "charter")}
    return [program.get(argv[0], argv[0]), *argv[1:]]


class Compose:
    def __init__(self, kafka: LocalKafka, database: str, work: Path) -> None:
        self.services = compose_config(BASE, DEMO)["services"]
        self.work = work
        self.prefix = f"charter.compose{uuid.uuid4().hex[:6]}."
        self.api_port = free_port()
        self.metrics_port = free_ports(len(SERVICES))
        self._kafka = kafka.bootstrap
        self._database = database
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[BinaryIO] = []

    def env(self, name: str) -> dict[str, str]:
        spec = self.services[name]
        env = _on_this_machine(spec["environment"], spec["volumes"], self._kafka, self._database, self.work)
        home = self.work / "homes" / name  # each container has a home of its own
        env.update(
            PATH=f"{CHARTER_BIN}:/usr/bin:/bin",
            CHARTER_HOME=str(home),
            CHARTER_TOPIC_PREFIX=self.prefix,  # the suite's Kafka is shared by other tests
            CHARTER_API_PORT=str(self.api_port),
            CHARTER_METRICS_PORT=str(self.metrics_port),
            CHARTER_PUBLIC_URL=f"http://127.0.0.1:{self.api_port}",
        )
        return env

    def once(self, name: str) -> None:
        result = subprocess.run(
            _command(self.services[name]["command"]),
            env=self.env(name), cwd=self.work, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"

    def start(self, name: str) -> None:
        log = (self.work / f"{name}.log").open("wb")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            _command(self.services[name]["command"]),
            env=self.env(name), cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def healthy(self, name: str) -> bool:
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        result = subprocess.run(
            _command(test[1:]),
            env=self.env(name),
            cwd=self.work,
            capture_output=True,
            timeout=30,
            check=False,
        )
        return result.returncode == 0

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()

    def settings(self) -> Settings:
        env = self.env("planner")
        return Settings.model_validate(
            {k.removeprefix("CHARTER_").lower(): v for k, v in env.items() if k.startswith("CHARTER_")}
        )


@pytest.fixture
def compose(kafka: LocalKafka, postgres_url: str, tmp_path: Path) -> Iterator[Compose]:
    stack = Compose(kafka, postgres_url, tmp_path)
    try:
        yield stack
    finally:
        stack.stop()


async def _governed_run(settings: Settings) -> tuple[str, RunCompleted | RunFailed]:
    since = datetime.now(UTC)
    async with Client(settings, source="compose-test") as client:
        trigger = await client.publish("support.refund_requested", {"order_id": "K-2001", "amount": 20})
        run = run_id(trigger.event_id, "support-refunds")
        async for received in client.subscribe("runs", since=since):
            event = received.event
            if isinstance(event, RunCompleted | RunFailed) and event.run_id == run:
                return run, event
    raise AssertionError("the runs topic ended")


def test_the_compose_services_run_a_governed_run_on_kafka_and_postgres(compose: Compose) -> None:
    compose.once("keys")  # `charter keys init`, into the keys volume
    compose.once("topics")  # `charter topics`
    for name in SERVICES:
        assert not compose.healthy(name)  # nothing has said it is ready yet
        compose.start(name)
    deadline = time.monotonic() + 120
    waiting = list(SERVICES)
    while waiting:
        for name, proc in compose.procs.items():
            assert proc.poll() is None, f"{name} exited: {(compose.work / f'{name}.log').read_text()[-2000:]}"
        waiting = [name for name in waiting if not compose.healthy(name)]
        assert time.monotonic() < deadline, f"not healthy in 120 s: {waiting}"
        time.sleep(1)

    run, end = asyncio.run(asyncio.wait_for(_governed_run(compose.settings()), 120))
    assert isinstance(end, RunCompleted), end
    # The audit, on PostgreSQL, recorded the run.
    engine = make_engine(compose.settings().database_url_for("audit"))
    try:
        deadline = time.monotonic() + 60
        with engine.connect() as conn:
            while "RunCompleted" not in [r.event_type for r in audit_store.timeline(conn, run)]:
                assert time.monotonic() < deadline, "the audit did not record the run"
                time.sleep(0.5)
                conn.rollback()
    finally:
        engine.dispose()
    # A service that stops is unhealthy at once.
    compose.procs["executor"].terminate()
    compose.procs["executor"].wait(15)
    assert not compose.healthy("executor")
