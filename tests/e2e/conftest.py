"""The real stack for end-to-end tests: `charter up` as a process, the five services as processes
of their own, on a real broker. Nothing here stands in for Kafka.

Every test that takes `stack` (or `broker`) runs twice: on the embedded Tansu broker and on
Apache Kafka (one KRaft broker for the session, each stack on it with a topic prefix of its
own). A test marked `needs("transactions")` runs only where the broker has that capability,
and its skip says which capability is missing. A broker that fails to start fails the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from charter import metrics_server, serde, topics
from charter.broker import CAPABILITIES
from charter.bus import Outgoing
from charter.client import Client
from charter.clock import derive_id
from charter.config import Settings
from charter.errors import ConfigError
from charter.events import RUN_TERMINAL, ApprovalRequested, Event, TriggerReceived
from charter.stack import readiness
from charter.stack.harness import StackNotReady, StackProcess
from charter.stack.kafka import LocalKafka
from charter.stack.processes import free_port, free_ports
from charter.stack.readiness import SERVICES
from charter.store import make_engine
from services.approvals import store as approvals
from services.audit.store import log_table
from tests.conftest import REPO

READY_TIMEOUT_S = 60
T = TypeVar("T")
EPOCH = datetime.fromtimestamp(0, UTC)


def stack_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a stack in `home`, with its own copy of the agents and policies (and
    the tests' own agents), so a test may edit them without touching the repository's."""
    config = home / "config"
    if not config.exists():
        shutil.copytree(REPO / "agents", config / "agents")
        # Agents only the tests use, each with limits of its own (tests/e2e/agents).
        for agent_file in (REPO / "tests" / "e2e" / "agents").glob("*.yaml"):
            shutil.copy(agent_file, config / "agents" / agent_file.name)
        shutil.copytree(REPO / "policies", config / "policies")
        shutil.copy(REPO / "users.yaml", config / "users.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env.update(
        # A stack of its own runs on the broker its test names: Tansu unless told (tests of the
        # default broker take this out).
        CHARTER_BROKER="tansu",
        CHARTER_HOME=str(home),
        CHARTER_AGENTS_DIR=str(config / "agents"),
        CHARTER_POLICIES_DIR=str(config / "policies"),
        CHARTER_USERS_FILE=str(config / "users.yaml"),
        CHARTER_API_PORT=str(free_port()),
        CHARTER_METRICS_PORT=str(free_ports(len(SERVICES))),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


BROKERS = [
    pytest.param("tansu", marks=pytest.mark.tansu, id="tansu"),
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """One Apache Kafka for the whole session."""
    workdir = tmp_path_factory.mktemp("kafka")
    broker = LocalKafka(workdir, workdir / "kafka.log")
    started = time.monotonic()
    try:
        broker.start()
    except ConfigError as exc:
        pytest.fail(f"Apache Kafka did not start: {exc}")
    TIMINGS["kafka_start_s"] = time.monotonic() - started
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session", params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _capabilities(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("needs")
    if marker is None or "broker" not in request.fixturenames:
        return
    kind = request.getfixturevalue("broker")
    missing = [cap for cap in marker.args if not getattr(CAPABILITIES[kind], cap)]
    if missing:
        pytest.skip(f"{kind} lacks {', '.join(missing)}")


def broker_env(request: pytest.FixtureRequest, kind: str) -> dict[str, str]:
    """What a stack needs to run on `kind`: nothing for Tansu (it starts its own), the session's
    Kafka and a fresh topic prefix for Kafka."""
    if kind == "tansu":
        return {}
    kafka: LocalKafka = request.getfixturevalue("kafka")
    return {
        "CHARTER_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CHARTER_BROKER": "kafka",
        "CHARTER_TOPIC_PREFIX": f"charter.{uuid.uuid4().hex[:8]}.",
    }


class Stack(StackProcess):
    def __init__(self, home: Path, env: dict[str, str], *args: str) -> None:
        super().__init__(home, env, *args)
        self._tokens: dict[tuple[str, tuple[str, ...]], str] = {}

    @property
    def settings(self) -> Settings:
        """The stack's settings, as its processes read them from their environment."""
        fields = {
            k.removeprefix("CHARTER_").lower(): v for k, v in self.env.items() if k.startswith("CHARTER_")
        }
        return Settings.model_validate(fields)

    @property
    def broker(self) -> str:
        return self.settings.broker_kind

    @property
    def policies_dir(self) -> Path:
        return self.home / "config" / "policies"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['CHARTER_API_PORT']}"

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "charter", *args],
            capture_output=True,
            text=True,
            env={**self.env, "CHARTER_TOKEN": token} if token else self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"charter {' '.join(args)} exited {result.returncode}: {result.stderr}{result.stdout}"
            )
        return result

    def publish(self, name: str, data: dict[str, object]) -> str:
        """Publish through the CLI, as a person would; returns the trigger's event id."""
        out = self.cli("publish", name, "--data", json.dumps(data)).stdout
        match = re.search(r"as event (\S+)", out)
        assert match, out
        return match.group(1)

    def token(self, user: str, *roles: str) -> str:
        """An API token for a user of the users file (scoped to `roles`, or all of theirs),
        issued with `charter tokens create` as an administrator would."""
        key = (user, roles)
        if key not in self._tokens:
            scope = [arg for role in roles for arg in ("--role", role)]
            out = self.cli("tokens", "create", "--user", user, *scope).stdout
            self._tokens[key] = out.strip().splitlines()[-1]
        return self._tokens[key]

    def as_user(self, user: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The CLI with that user's token, as they would run it."""
        return self.cli(*args, check=check, token=self.token(user))

    def service_pid(self, name: str) -> int:
        return readiness.ready_pids(self.settings)[name]


def start_stack(home: Path, *args: str, **env: str) -> Stack:
    stack = Stack(home, stack_env(home, **env), *args)
    try:
        stack.wait_ready(READY_TIMEOUT_S)
    except StackNotReady as exc:
        pytest.fail(str(exc))
    return stack


@contextmanager
def running(home: Path, **env: str) -> Iterator[Stack]:
    """A stack of its own for as long as the block runs."""
    stack = start_stack(home, **env)
    try:
        yield stack
    finally:
        if stack.proc.poll() is None:
            stack.stop()


@pytest.fixture(scope="session")
def stack(
    broker: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running(
        tmp_path_factory.mktemp(f"stack-{broker}") / "home", **broker_env(request, broker)
    ) as shared:
        yield shared


def in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run in a thread of its own, so a test that runs an event loop already (the
    browser test, through Playwright's sync API) can wait for events too."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def produce_nameless(stack: Stack, key: str) -> None:
    """Put on the triggers topic a well-formed trigger with an empty event id, keyed and
    correlated by `key`: it breaks the envelope's rules, and the planner dead-letters it."""
    nameless = TriggerReceived.create(
        event_id="",
        now=datetime.now(UTC),
        tenant=stack.settings.tenant,
        correlation_id=key,
        name="support.refund_requested",
        data={"order_id": "E-1", "amount": 20},
        source="test",
    )
    produce_raw(stack, serde.encode(nameless), key.encode())


def produce_raw(stack: Stack, value: bytes, key: bytes) -> None:
    """Put raw bytes on the triggers topic, as a foreign or broken producer would."""

    async def go() -> None:
        async with Client(stack.settings) as client:
            await client.send_record(Outgoing(topics.name(stack.settings, topics.Topic.TRIGGERS), key, value))

    asyncio.run(go())


def run_id(trigger_id: str, agent: str) -> str:
    """What the planner will call the run this trigger starts for this agent."""
    return derive_id(trigger_id, f"run:{agent}")


def wait_for(stack: Stack, predicate: Callable[[Event], bool], *topics: str, timeout: float = 30) -> Event:
    """The first event on `topics`, reading from the beginning, that satisfies `predicate`."""

    async def go() -> Event:
        async with (
            Client(stack.settings) as client,
            asyncio.timeout(timeout),
            aclosing(client.subscribe(*topics, since=EPOCH)) as events,
        ):
            async for received in events:
                if received.event is not None and predicate(received.event):
                    return received.event
        raise AssertionError("subscription ended")

    return in_thread(go)


def wait_approval(stack: Stack, run: str, timeout: float = 30) -> ApprovalRequested:
    """The run's first approval request, once the approvals service has recorded it as pending,
    which is when a person could see it in `charter approvals list`."""
    request = wait_for(
        stack, lambda e: isinstance(e, ApprovalRequested) and e.run_id == run, "approvals.requested"
    )
    assert isinstance(request, ApprovalRequested)
    return wait_pending(stack, request, timeout)


def wait_pending(stack: Stack, request: ApprovalRequested, timeout: float = 30) -> ApprovalRequested:
    """`request`, once the approvals service has recorded it as pending."""
    wait_approval_status(stack, request.approval_id, "pending", timeout)
    return request


def wait_approval_status(stack: Stack, approval_id: str, status: str, timeout: float = 30) -> None:
    """Until the approvals service has recorded the approval with that status."""
    engine = make_engine(stack.settings.database_url_for("approvals"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                found = approvals.pending_of(conn, approval_id)
                if found is not None and found.status == status:
                    return
            assert time.monotonic() < deadline, f"approval {approval_id} never recorded as {status}"
            time.sleep(0.02)
    finally:
        engine.dispose()


def approve_when_up(stack: Stack, approval_id: str, user: str = "dana", timeout: float = 30) -> None:
    """Approve through the CLI once the API answers again (after a restart of the approvals
    service), checking first that the approval is still listed as pending."""
    deadline = time.monotonic() + timeout
    while (listed := stack.as_user(user, "approvals", "list", check=False)).returncode != 0:
        assert "cannot reach the API" in listed.stderr, listed.stderr
        assert time.monotonic() < deadline, f"the API did not come back: {listed.stderr}"
        time.sleep(0.2)
    assert approval_id[:8] in listed.stdout, listed.stdout
    out = stack.as_user(user, "approvals", "approve", approval_id).stdout
    assert f"approved by {user}" in out, out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_restarted(stack: Stack, name: str, old_pid: int, timeout: float = 45) -> int:
    """Wait until a new process of `name` has joined its group; return its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # No file while the new process starts: it clears its predecessor's until it is ready.
        pid = readiness.ready_pids(stack.settings).get(name)
        if pid is not None and pid != old_pid and alive(pid):
            return pid
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted within {timeout}s:\n{stack.text()}")


def wait_run_end(stack: Stack, run: str, timeout: float = 30) -> Event:
    """The run's last event: completed, failed, cancelled or escalated."""
    end = wait_for(stack, lambda e: isinstance(e, RUN_TERMINAL) and e.run_id == run, "runs", timeout=timeout)
    assert isinstance(end, RUN_TERMINAL)
    return end


RUN_TOPICS = ("runs", "actions.proposed", "actions.approved", "actions.rejected", "actions.results")


def audited_run(stack: Stack, run: str, timeout: float = 30) -> list[str]:
    """The event ids the audit log holds for a run once it holds every one of the run's events
    on its topics: the audit reads each topic on its own, so the run's end being recorded says
    nothing of its actions."""
    on_topics = {e.event_id for e in run_events(stack, run, *RUN_TOPICS)}
    engine = make_engine(stack.settings.database_url_for("audit"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                query = select(log_table.c.event_id).where(log_table.c.run_id == run)
                audited = [str(event_id) for event_id in conn.execute(query).scalars()]
            if on_topics <= set(audited):
                return audited
            assert time.monotonic() < deadline, f"not audited: {on_topics - set(audited)}"
            time.sleep(0.2)
    finally:
        engine.dispose()


def wait_audited(stack: Stack, event_id: str, timeout: float = 30) -> None:
    """Until the audit log holds the event."""
    engine = make_engine(stack.settings.database_url_for("audit"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                if conn.execute(select(log_table.c.seq).where(log_table.c.event_id == event_id)).first():
                    return
            assert time.monotonic() < deadline, f"event {event_id} never reached the audit log"
            time.sleep(0.1)
    finally:
        engine.dispose()


def shown_when(stack: Stack, run: str, text: str, timeout: float = 30) -> str:
    """`charter run show` of the run once it shows `text`: it reads the audit log, which may
    not have recorded yet what a test saw on a topic."""
    deadline = time.monotonic() + timeout
    while text not in (shown := stack.cli("run", "show", run, check=False).stdout):
        assert time.monotonic() < deadline, shown
        time.sleep(0.3)
    return shown


def run_events(stack: Stack, run: str, *topics: str) -> list[Event]:
    """A run's events on some topics, read from the beginning to the end."""

    async def go() -> list[Event]:
        found: list[Event] = []
        async with Client(stack.settings) as client:
            for topic in topics:
                async for received in client.replay(topic, run_id=run):
                    if received.event is not None:
                        found.append(received.event)
        return found

    return in_thread(go)


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(stack: Stack, service: str, token: str | None) -> httpx.Response:
    """A service's metrics endpoint, asked with `token` (or none)."""
    port = metrics_server.port(stack.settings, service)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=5)


def samples(stack: Stack, service: str) -> Samples:
    """A service's metrics, scraped with the stack's token: each sample's labels and value, by name."""
    response = scrape(stack, service, metrics_server.token(stack.settings))
    assert response.status_code == 200, response.text
    found: Samples = defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def value(got: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for have, v in got.get(name, []) if labels.items() <= have.items())
