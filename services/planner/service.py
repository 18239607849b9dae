"""The planner as a faust app: the thin adapter around `decide` and `reason`.

faust runs the consumer group and hands records over one at a time; Charter's pipeline
decodes, traces and dead-letters them, this module reads and writes run state, and the
outputs are acknowledged by the broker before faust may commit the input's offset.

A model-planned run's model calls happen between two transactions: the decision is made
over the state as read, the model is asked (no transaction open while it thinks), and the
new state is written with the event's inbox record only if the run's row has not changed
meanwhile (a kill switch, say); otherwise the event is decided again. A planner killed
mid-call has written nothing, so the record is redelivered and decided again; one killed
after the write re-sends the outputs it recorded. Either way no step is proposed twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import faust
import mode
from aiokafka import TopicPartition
from sqlalchemy import Connection, Engine

from charter import agents as agent_files
from charter import broker, metrics, metrics_server, store, tools, topics
from charter.agents import Agent
from charter.clock import Clock, SystemClock
from charter.config import Settings
from charter.consumer import LAG_EVERY_S, Delivery
from charter.errors import InvalidEvent
from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionRejected,
    Event,
    KillSwitchSet,
    RunHandedOff,
    RunInstructed,
    RunWaiting,
    ToolUnavailable,
    TriggerReceived,
    WaitExpired,
)
from charter.faust_batches import take_ready
from charter.killswitch import ControlFollower, SwitchStore
from charter.pipeline import Pipeline, Prepared, decode_all
from charter.secrets import Secrets, guard_logs
from charter.service import group_id, service_bus
from charter.stack import readiness
from charter.topics import Topic
from charter.watch import DirectoryWatcher
from services.planner import coordinate, decide, reason
from services.planner import store as runs
from services.planner.batch import Batches
from services.planner.measure import Measure
from services.planner.model import ModelClient, ModelUnavailable
from services.planner.run import RunState, Transition

log = logging.getLogger(__name__)
NAME = "planner"
TOPICS = (Topic.TRIGGERS, Topic.ACTIONS_RESULTS, Topic.ACTIONS_REJECTED)


# How often the timer looks for waits that have run out.
WAIT_TICK_S = 1.0
# Times an event is decided again because a run it changes changed while its model thought.
CONFLICT_RETRIES = 5
# Records handled together: their outputs are sent together and awaited once, so the planner
# pays one broker round trip a batch rather than one a record. A batch is what has arrived by
# the time the last one is done (charter.faust_batches), so batching adds no wait of its own.
BATCH_MAX = 200


class _Changed(Exception):
    pass


class Planner:
    def __init__(self, settings: Settings, engine: Engine, clock: Clock, model: ModelClient) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._model = model
        self._measure = Measure()
        self._pricing = reason.Pricing(settings.llm_input_cost_per_1k, settings.llm_output_cost_per_1k)
        self._watcher = DirectoryWatcher(settings.agents_dir, ("*.yaml", "*.yml"))
        self.registry = tools.load(settings.tool_module_list())
        # The business events some run may wait for, kept in case they come before the wait:
        # every event a wait step of an agent loaded since start awaits, and every event a
        # stored wait names (a run started under an older agent file).
        self._awaited = runs.awaited_events(engine)
        self._use(self._load_agents())
        self._batches = Batches(engine, clock, self._measure.observe)

    def _use(self, agents: Mapping[str, Agent]) -> None:
        self.agents = agents
        self._awaited |= {s.wait.event for a in agents.values() for s in a.steps if s.wait is not None}

    async def close(self) -> None:
        await self._model.close()

    def _load_agents(self) -> Mapping[str, Agent]:
        return agent_files.load(self._settings.agents_dir, self.registry)

    def reload_if_changed(self) -> None:
        if self._watcher.changed():
            try:
                self._use(self._load_agents())
                log.info("agents reloaded: %s", ", ".join(sorted(self.agents)))
            except Exception as exc:  # keep planning with the last good agents
                log.error("agents not reloaded, keeping the previous ones: %s", exc)

    async def handle(self, event: Event, _delivery: Delivery) -> Sequence[Event]:
        for _ in range(CONFLICT_RETRIES):
            try:
                return await self._handle_once(event)
            except _Changed:
                log.info("a run %s changes changed meanwhile; deciding it again", event.event_id)
        raise RuntimeError(f"runs changed under {event.event_id} {CONFLICT_RETRIES} times in a row")

    async def prepare_batch(self, pipeline: Pipeline, deliveries: Sequence[Delivery]) -> list[Prepared]:
        """Decide a batch of records through `pipeline`, in one transaction
        (services/planner/batch.py), committed before their outputs may be sent."""
        decoded = decode_all(deliveries)
        return await self._batches.run(decoded, lambda: pipeline.prepare_batch(deliveries, decoded))

    async def _handle_once(self, event: Event) -> Sequence[Event]:
        with self._batches.begin() as conn:
            done = self._batches.done(conn, event)
            if done is not None:
                return done
            now = self._clock.now()
            if isinstance(event, KillSwitchSet):
                transitions = decide.on_kill_switch(event, runs.running(conn, event.scope_agent), now)
            else:
                transitions = self._decide(conn, event, now)
            if not any(t.think for t in transitions):
                return self._commit(conn, event, transitions, now)
            # The model thinks with no transaction open; what was read is checked before writing.
            seen = runs.snapshot(conn, [t.state.run_id for t in transitions])
        self._batches.commit()
        thought = [await self._think(t, event) for t in transitions]
        with self._batches.begin() as conn:
            done = self._batches.done(conn, event, fresh=True)
            if done is not None:
                return done
            if runs.snapshot(conn, list(seen)) != seen:
                raise _Changed
            return self._commit(conn, event, thought, self._clock.now())

    def _commit(self, conn: Connection, event: Event, transitions: list[Transition], now: Any) -> list[Event]:
        for transition in transitions:
            runs.put(conn, transition.state, now)
        outputs = [e for t in transitions for e in t.outputs]
        self._batches.record(conn, event, outputs, now)
        return outputs

    async def _think(self, transition: Transition, event: Event) -> Transition:
        """Ask the model until the run proposes an action, ends or escalates."""
        outputs = list(transition.outputs)
        cause = outputs[-1] if outputs else event
        while transition.think:
            state = transition.state
            transition = reason.before_call(state, cause, self._clock.now()) or await self._turn(state, cause)
            outputs += transition.outputs
        return Transition(transition.state, outputs)

    async def _turn(self, state: RunState, cause: Event) -> Transition:
        body = reason.request(state, self.registry, self._settings.llm_model)
        try:
            reply = await self._model.complete(body)
        except ModelUnavailable as exc:
            log.warning("run %s: the model is unavailable: %s", state.run_id, exc)
            return reason.on_model_error(state, cause, str(exc), self._clock.now())
        return reason.on_reply(
            state, reply, cause, self._clock.now(), registry=self.registry, pricing=self._pricing
        )

    def _decide(self, conn: Any, event: Event, now: Any) -> list[Transition]:
        match event:
            case TriggerReceived():
                transitions = self._on_trigger(conn, event, now)
            case RunHandedOff():
                target = self.agents.get(event.to_agent)
                if target is None:
                    raise InvalidEvent(f"handoff {event.event_id} is to unknown agent {event.to_agent}")
                candidates = [decide.run_id_for(coordinate.trigger_of(event), target)]
                transitions = decide.on_handoff(event, self.agents, runs.existing(conn, candidates), now)
            case RunInstructed():
                transitions = self._on_instruction(conn, event, now)
            case ActionExecuted() | ActionFailed() | ActionRejected() | ToolUnavailable() | WaitExpired():
                state = self._state(conn, event)
                if isinstance(event, WaitExpired):
                    transition = decide.on_wait_expired(event, state, now)
                else:
                    transition = decide.on_outcome(event, state, now)
                transitions = [transition] if transition else []
            case _:
                transitions = []
        return [self._settle(conn, t, now) for t in transitions]

    def _on_trigger(self, conn: Any, trigger: TriggerReceived, now: Any) -> list[Transition]:
        """Start the runs the business event starts, and go on with the runs that await it."""
        candidates = [decide.run_id_for(trigger, a) for a in self.agents.values()]
        transitions = decide.on_trigger(trigger, self.agents, runs.existing(conn, candidates), now)
        if trigger.name in self._awaited:
            runs.keep_signal(conn, trigger, now)
        # Every trigger looks for the runs that wait for it: a run may wait on an event no agent
        # file names any more (it started under an older one, here or on another replica).
        for run_id in runs.waiting_for(conn, trigger.name, trigger.data):
            state = runs.get(conn, run_id)
            awaited = decide.on_signal(trigger, state, now) if state else None
            if awaited is not None:
                transitions.append(awaited)
        return transitions

    def _on_instruction(self, conn: Any, instruction: RunInstructed, now: Any) -> list[Transition]:
        state = self._state(conn, instruction)
        transition = decide.on_instruction(instruction, state, now)
        if transition is None:
            log.warning(
                "run %s is %s: %s by %s not applied",
                state.run_id,
                state.status,
                instruction.command,
                instruction.instructed_by,
            )
        return [transition] if transition else []

    def _settle(self, conn: Any, transition: Transition, now: Any) -> Transition:
        """A run that has just begun to wait goes on at once if its event came before."""
        state, outputs = transition.state, list(transition.outputs)
        while state.status == "waiting" and any(isinstance(e, RunWaiting) for e in outputs[-1:]):
            wait = state.agent.steps[state.step_index].wait
            assert wait is not None
            early = runs.signal_for(conn, wait.event, wait.field, state.wait_key or "")
            going_on = decide.on_signal(early, state, now) if early else None
            if going_on is None:
                break
            state, outputs = going_on.state, [*outputs, *going_on.outputs]
        return Transition(state, outputs, transition.think)

    async def expire_waits(self) -> list[tuple[WaitExpired, int]]:
        """What the timer publishes for waits that have run out; each is then handled as any
        event is, so a wait expired twice (a restart, two replicas) counts once."""
        now = self._clock.now()
        expired: list[tuple[WaitExpired, int]] = []
        with self._engine.begin() as conn:
            for run_id, step, attempt, _event, _key in runs.due(conn, now):
                state = runs.get(conn, run_id)
                if state is not None and (state.status, state.step_index, state.attempt) == (
                    "waiting",
                    step,
                    attempt,
                ):
                    expired.append((coordinate.expired(state, now), attempt))
        return expired

    def fired(self, expired: Sequence[tuple[WaitExpired, int]]) -> None:
        """Mark the waits reported: each by its run, step and attempt, never a later wait."""
        with self._engine.begin() as conn:
            for event, attempt in expired:
                runs.fired(conn, event.run_id or "", event.step, attempt)

    def _state(self, conn: Any, event: Event) -> RunState:
        if event.run_id is None:
            raise InvalidEvent(f"{event.envelope.event_type} {event.event_id} has no run id")
        state = runs.get(conn, event.run_id)
        if state is None:
            raise InvalidEvent(
                f"{event.envelope.event_type} {event.event_id} is for unknown run {event.run_id}"
            )
        return state


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
        self.metrics = metrics_server.server(settings, NAME)
        if self.metrics is not None:
            self._joined["metrics"] = False
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

    async def expire_waits_forever(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(WAIT_TICK_S)
            try:
                await self.expire_waits()
            except Exception:  # the next tick tries again: a wait is reported late, never lost
                log.exception("expiring waits failed")

    async def expire_waits(self) -> None:
        """Publish WaitExpired for each wait run out, then mark it reported. Published first:
        a crash in between publishes it again, under the same id."""
        if not self.bus.running:
            return
        expired = await self._planner.expire_waits()
        if not expired:
            return
        async with self.bus.transaction():
            await asyncio.gather(*[await self.bus.send(event) for event, _ in expired])
        self._planner.fired(expired)

    async def _cancel(self, switch: KillSwitchSet) -> None:
        outputs = await self._planner.handle(switch, _NO_DELIVERY)
        async with self.bus.transaction():
            await asyncio.gather(*[await self.bus.send(event) for event in outputs])

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        # On Kafka, the outputs and these records' offsets commit in one transaction; faust's
        # own later commit of the same offsets changes nothing.
        async with self.bus.transaction():
            await self.pipeline.publish(await self._planner.prepare_batch(self.pipeline, deliveries))
            if self.bus.transactional:
                offsets = {TopicPartition(d.topic, d.partition): d.offset + 1 for d in deliveries}
                await self.bus.send_offsets(offsets, group_id(self.settings, NAME))

    async def serve_metrics(self) -> None:
        if self.metrics is None:
            return
        serving = asyncio.create_task(self.metrics.run(self.stopping))
        await self.metrics.listening.wait()
        self.joined("metrics")
        await serving

    async def measure_lag(self, consumer: Any) -> None:
        """As charter.consumer does for the other services, from the faust consumer's own view."""
        while not self.stopping.is_set():
            await asyncio.sleep(LAG_EVERY_S)
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                position = await consumer.position(tp)
                if highwater is not None and position is not None:
                    lag = max(0, highwater - position)
                    metrics.consumer_lag.labels(NAME, tp.topic, str(tp.partition)).set(lag)

    async def follow_control(self) -> None:
        await self.start_bus()
        await self.control.run(self.stopping, on_assigned=lambda: self.joined("control"))


def _model_client(settings: Settings) -> ModelClient:
    """The model server's client, holding its key and no other secret; the key is redacted from
    every line this process logs."""
    key = Secrets.load(settings.secrets_file).get(settings.llm_api_key_secret)
    secrets = Secrets({settings.llm_api_key_secret: key} if key else {})
    guard_logs(secrets)
    return ModelClient(settings, secrets)


def build_app(settings: Settings) -> faust.App:
    engine = store.make_engine(settings.database_url_for(NAME))
    runs.create(engine)
    metrics.runs_in_flight.set_function(lambda: runs.in_flight(engine))
    planner = Planner(settings, engine, SystemClock(), _model_client(settings))
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
            await planner.close()

        @mode.Service.task
        async def _watch_agents(self) -> None:
            while not self.should_stop:
                planner.reload_if_changed()
                await self.sleep(1.0)

        @mode.Service.task
        async def _expire_waits(self) -> None:
            await runtime.expire_waits_forever()

        @mode.Service.task
        async def _follow_control(self) -> None:
            await runtime.follow_control()

        @mode.Service.task
        async def _metrics(self) -> None:
            await asyncio.gather(runtime.serve_metrics(), runtime.measure_lag(app.consumer))

    @app.agent(source)
    async def plan(stream: Any) -> None:
        await runtime.start_bus()
        async for records in take_ready(stream, BATCH_MAX):
            await runtime.process([_delivery(record.message) for record in records])

    async def _assigned(_app: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        runtime.joined("main")

    # mode types signal handlers with mypy_extensions.NamedArg, which no plain def matches.
    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]
    return app
