"""The planner as a faust app: the thin adapter around `decide`.

faust runs the consumer group and hands records over one at a time; Charter's pipeline
decodes, traces and dead-letters them, this module reads and writes run state, and the
outputs are acknowledged by the broker before faust may commit the input's offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import faust
import mode
from aiokafka import TopicPartition
from sqlalchemy import Engine

from charter import agents as agent_files
from charter import broker, store, tools, topics
from charter.agents import Agent
from charter.clock import Clock, SystemClock
from charter.config import Settings
from charter.consumer import Delivery
from charter.errors import InvalidEvent
from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionRejected,
    Event,
    KillSwitchSet,
    ToolUnavailable,
    TriggerReceived,
)
from charter.killswitch import ControlFollower, SwitchStore
from charter.pipeline import Pipeline
from charter.service import group_id, service_bus
from charter.stack import readiness
from charter.topics import Topic
from charter.watch import DirectoryWatcher
from services.planner import decide
from services.planner import store as runs

log = logging.getLogger(__name__)
NAME = "planner"
TOPICS = (Topic.TRIGGERS, Topic.ACTIONS_RESULTS, Topic.ACTIONS_REJECTED)


class Planner:
    def __init__(self, settings: Settings, engine: Engine, clock: Clock) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._watcher = DirectoryWatcher(settings.agents_dir, ("*.yaml", "*.yml"))
        self.agents: Mapping[str, Agent] = self._load_agents()

    def _load_agents(self) -> Mapping[str, Agent]:
        registry = tools.load(self._settings.tool_module_list())
        return agent_files.load(self._settings.agents_dir, registry)

    def reload_if_changed(self) -> None:
        if self._watcher.changed():
            try:
                self.agents = self._load_agents()
                log.info("agents reloaded: %s", ", ".join(sorted(self.agents)))
            except Exception as exc:  # keep planning with the last good agents
                log.error("agents not reloaded, keeping the previous ones: %s", exc)

    async def handle(self, event: Event, _delivery: Delivery) -> Sequence[Event]:
        with self._engine.begin() as conn:
            done = runs.inbox.outputs_of(conn, event.event_id)
            if done is not None:
                return done
            now = self._clock.now()
            if isinstance(event, KillSwitchSet):
                transitions = decide.on_kill_switch(event, runs.running(conn, event.scope_agent), now)
            else:
                transitions = self._decide(conn, event, now)
            for transition in transitions:
                runs.put(conn, transition.state, now)
            outputs = [e for t in transitions for e in t.outputs]
            runs.inbox.record(conn, event, outputs, now)
        return outputs

    def _decide(self, conn: Any, event: Event, now: Any) -> list[decide.Transition]:
        if isinstance(event, TriggerReceived):
            candidates = [decide.run_id_for(event, a) for a in self.agents.values()]
            return decide.on_trigger(event, self.agents, runs.existing(conn, candidates), now)
        if isinstance(event, ActionExecuted | ActionFailed | ActionRejected | ToolUnavailable):
            if event.run_id is None:
                raise InvalidEvent(f"{event.envelope.event_type} {event.event_id} has no run id")
            state = runs.get(conn, event.run_id)
            if state is None:
                raise InvalidEvent(
                    f"{event.envelope.event_type} {event.event_id} is for unknown run {event.run_id}"
                )
            transition = decide.on_outcome(event, state, now)
            return [transition] if transition else []
        return []


# A kill switch reaches the planner through its control follower, not as one of its records.
_NO_DELIVERY = Delivery("", -1, -1, None, b"", (), 0)


def _delivery(message: Any) -> Delivery:
    headers = message.headers or ()
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    return Delivery(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=tuple(headers),
        timestamp_ms=int(message.timestamp * 1000),
    )


class Runtime:
    """What the faust app needs besides faust: the producer, the pipeline, the control
    follower, and readiness, which waits for both the app's group and the follower's."""

    def __init__(self, settings: Settings, planner: Planner, engine: Engine) -> None:
        self.settings = settings
        self.bus = service_bus(settings, NAME)
        self.pipeline = Pipeline(NAME, self.bus, planner.handle, SystemClock())
        self._planner = planner
        self._started = asyncio.Lock()
        self._joined = {"main": False, "control": False}
        self.stopping = asyncio.Event()
        self.control = ControlFollower(
            settings,
            NAME,
            bus=self.bus,
            engine=engine,
            store=SwitchStore(engine, runs.switches),
            on_change=self._cancel,
        )

    async def start_bus(self) -> None:
        # The agent may see records before faust starts app services, so whoever comes first starts it.
        async with self._started:
            if not self.bus.running:
                await self.bus.start()

    def joined(self, what: str) -> None:
        self._joined[what] = True
        if all(self._joined.values()):
            readiness.mark(self.settings, NAME)

    async def _cancel(self, switch: KillSwitchSet) -> None:
        outputs = await self._planner.handle(switch, _NO_DELIVERY)
        async with self.bus.transaction():
            await asyncio.gather(*[await self.bus.send(event) for event in outputs])

    async def process(self, delivery: Delivery) -> None:
        # On Kafka, the outputs and this record's offset commit in one transaction; faust's own
        # later commit of the same offset changes nothing.
        async with self.bus.transaction():
            await self.pipeline.process_batch([delivery])
            if self.bus.transactional:
                offset = {TopicPartition(delivery.topic, delivery.partition): delivery.offset + 1}
                await self.bus.send_offsets(offset, group_id(self.settings, NAME))

    async def follow_control(self) -> None:
        await self.start_bus()
        await self.control.run(self.stopping, on_assigned=lambda: self.joined("control"))


def build_app(settings: Settings) -> faust.App:
    engine = store.make_engine(settings.database_url_for(NAME))
    runs.create(engine)
    planner = Planner(settings, engine, SystemClock())
    runtime = Runtime(settings, planner, engine)
    datadir = settings.home / "run" / "planner-faust"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        group_id(settings, NAME),
        broker=[f"charter://{server}" for server in settings.bootstrap().split(",")],
        web_enabled=False,
        datadir=str(datadir),
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        producer_acks=-1,
        producer_enable_idempotence=broker.capabilities(settings).idempotent_producer,
    )
    source = app.topic(
        *(topics.name(settings, t) for t in TOPICS), value_serializer="raw", key_serializer="raw"
    )

    @app.service
    class Services(mode.Service):
        async def on_stop(self) -> None:
            runtime.stopping.set()
            await runtime.bus.stop()

        @mode.Service.task
        async def _watch_agents(self) -> None:
            while not self.should_stop:
                planner.reload_if_changed()
                await self.sleep(1.0)

        @mode.Service.task
        async def _follow_control(self) -> None:
            await runtime.follow_control()

    @app.agent(source)
    async def plan(stream: Any) -> None:
        await runtime.start_bus()
        async for record in stream.events():
            await runtime.process(_delivery(record.message))

    async def _assigned(_app: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        runtime.joined("main")

    # mode types signal handlers with mypy_extensions.NamedArg, which no plain def matches.
    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]
    return app
