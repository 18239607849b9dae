"""`charter up`: the broker, the topics, the five services, and (with --demo) a governed run.

Ready means every service's consumer group has joined and its partitions are assigned; the
time to get there is printed. The stack stops, within 10 s, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType

from aiokafka.admin import AIOKafkaAdminClient

from charter import broker, metrics_server, signing, topics
from charter.api_client import ApiClient
from charter.client import Client
from charter.config import BrokerKind, Settings
from charter.demo import scenario
from charter.errors import ConfigError
from charter.identity import operator, tokens
from charter.stack import local_broker, readiness
from charter.stack.local_broker import LocalBroker
from charter.stack.readiness import SERVICES
from charter.stack.supervisor import Supervisor, service_argv
from charter.store import make_engine

READY_TIMEOUT_S = 60.0
Say = Callable[[str], None]


async def create_topics(settings: Settings) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap(), client_id="charter-up")
    await admin.start()
    try:
        return await topics.ensure(admin, settings)
    finally:
        await admin.close()


def _claim_home(settings: Settings) -> None:
    """One stack per home: a second `charter up` would share stores and confuse the CLI."""
    try:
        other = json.loads(settings.stack_file.read_text())
        os.kill(int(other["pid"]), 0)
    except (FileNotFoundError, ProcessLookupError, ValueError, KeyError):
        return
    raise ConfigError(f"a stack already runs from {settings.home} (pid {other['pid']}); stop it first")


def service_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CHARTER_HOME": str(settings.home.resolve()),
            "CHARTER_BOOTSTRAP_SERVERS": settings.bootstrap(),
            "CHARTER_BROKER": settings.broker_kind,
            "CHARTER_AGENTS_DIR": str(settings.agents_dir.resolve()),
            "CHARTER_POLICIES_DIR": str(settings.policies_dir.resolve()),
            "CHARTER_USERS_FILE": str(settings.users_file.resolve()),
            "CHARTER_KEYS_DIR": str(settings.keys.resolve()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        self.event.set()


def _wait_ready(settings: Settings, supervisor: Supervisor, stop: _Stop) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S and not stop.event.is_set():
        supervisor.poll()
        ready = readiness.ready_pids(settings)
        pids = supervisor.pids()
        if all(pid is not None and ready.get(name) == pid for name, pid in pids.items()):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def up(
    settings: Settings, *, demo: bool, once: bool, broker_kind: BrokerKind | None = None, say: Say = print
) -> int:
    t0 = time.monotonic()
    _claim_home(settings)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    readiness.clear(settings)
    created_keys = signing.ensure_keys(settings.keys)
    metrics_server.token(settings)  # made here, not raced for by the five services
    if created_keys:
        say(f"signing keys created for {', '.join(created_keys)} in {settings.keys}/")
    approvals_store = make_engine(settings.database_url_for("approvals"))
    try:
        admin = operator.ensure(settings, approvals_store)
    finally:
        approvals_store.dispose()
    if admin is not None:
        say(
            f"the CLI acts as {admin} (admin) with the token in {operator.path(settings)}; "
            "set CHARTER_TOKEN to act as someone else"
        )
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    local: LocalBroker | None = None
    supervisor: Supervisor | None = None
    try:
        settings, local = local_broker.start(settings, broker_kind, say)
        say(broker.capabilities(settings).describe())
        created = asyncio.run(create_topics(settings))
        say(
            f"topics: {len(topics.specs(settings))} ready "
            f"({len(created)} created, {settings.partitions} partitions each)"
        )
        _write_stack_file(settings, local)
        commands = {name: service_argv(name) for name in SERVICES}
        supervisor = Supervisor(
            commands,
            settings.logs_dir,
            service_env(settings),
            notify=say,
            ready=lambda: readiness.ready_pids(settings),
        )
        supervisor.start_all()
        took = _wait_ready(settings, supervisor, stop)
        if took is None:
            if stop.event.is_set():
                return 130
            say(f"not ready after {READY_TIMEOUT_S:.0f}s; see the logs in {settings.logs_dir}")
            return 1
        say(f"ready in {time.monotonic() - t0:.1f}s ({took:.1f}s for the five services to join their groups)")
        say(f"logs: {settings.logs_dir}/  stores: {settings.data_dir}/")
        say(f"console: {settings.console_url}/console  API: {_api_url(settings)}/v1")
        if demo:
            _demo(settings, say)
        if once:
            return 0
        say("running; Ctrl-C to stop")
        while not stop.event.wait(0.2):
            supervisor.poll()
            if local is not None and not local.alive():
                say(f"the local broker died; see {settings.logs_dir / 'broker.log'}")
                return 1
        return 0
    finally:
        _shutdown(settings, supervisor, local, say)


def _demo_token(settings: Settings) -> str:
    """A short-lived token for the demo's approver, issued as `charter tokens create` would."""
    engine = make_engine(settings.database_url_for("approvals"))
    try:
        tokens.create(engine)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            _, secret = tokens.issue(
                conn,
                user_id=scenario.DEMO_APPROVER,
                roles=["finance"],
                now=now,
                expires_at=now + timedelta(hours=1),
                description="charter up --demo",
            )
        return secret
    finally:
        engine.dispose()


def _operator_token(settings: Settings) -> str:
    """The token the demo publishes with: the operator's, which `up` made."""
    token = operator.saved(settings)
    if token is None:
        raise ConfigError(f"the demo needs an admin in {settings.users_file} to publish as")
    return token


def _demo(settings: Settings, say: Say) -> None:
    async def go() -> list[scenario.RunOutcome]:
        with (
            ApiClient(_api_url(settings), _demo_token(settings)) as api,
            ApiClient(_api_url(settings), _operator_token(settings)) as operator_api,
        ):
            async with Client(settings, source="demo") as client:
                return await scenario.run(client, api, say, publisher=operator_api)

    outcomes = asyncio.run(go())
    say("")
    say("how each run ended:")
    for o in sorted(outcomes, key=lambda o: o.triggered_at):
        took = f"{o.seconds * 1000:.0f} ms" if o.seconds is not None else "-"
        say(f"  {o.run_id[:8]}  {o.agent:<16} {o.outcome:<9} {took:>8}  {o.trigger}")
        say(f"            {o.detail}")
    say("")
    say("see one run's timeline with: charter runs show <id>")


def _api_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


def _write_stack_file(settings: Settings, local: LocalBroker | None) -> None:
    settings.stack_file.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "bootstrap_servers": settings.bootstrap(),
                "broker": settings.broker_kind,
                "broker_pid": local.pid if local else None,
                "logs": str(settings.logs_dir.resolve()),
                "api_url": _api_url(settings),
                "started_at": time.time(),
            }
        )
    )


def _shutdown(settings: Settings, supervisor: Supervisor | None, local: LocalBroker | None, say: Say) -> None:
    t = time.monotonic()
    if supervisor is not None:
        killed = supervisor.stop_all(deadline_s=7.0)
        if killed:
            say(f"killed after the deadline: {', '.join(killed)}")
    if local is not None:
        local.stop()
    settings.stack_file.unlink(missing_ok=True)
    readiness.clear(settings)
    say(f"stopped in {time.monotonic() - t:.1f}s")
