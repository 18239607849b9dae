"""The planner's adapter around `decide` and `reason`, on the runtime every service shares.

Records come by key (charter.runtime.consumer, `keyed`): a run's in order, runs side by side.
Charter's pipeline decodes, traces and dead-letters them, this module reads and writes run
state, and the outputs are acknowledged by the broker before the input's offset is committed.

A model-planned run's model calls happen between two transactions: the decision is made over
the state as read, the model is asked `Later` (no transaction open while it thinks, and no
other run waiting for it), and the new state is written with the event's inbox record only if
the run's row has not changed meanwhile (a kill switch, say); otherwise the event is decided
again. A planner killed mid-call has written nothing, so the record is redelivered and decided
again; one killed after the write re-sends the outputs it recorded. Either way no step is
proposed twice. Every proposal and handoff is signed with the planner's key before it is
recorded, so the outputs sent again are the ones first sent; policy decides no proposal, and
the planner starts no handed-off run, that the planner did not make.

A run is one trace from its trigger to its end: the trace it began in is kept with it, and every
later event of the run (a tool's result, a person's decision, the business event it waited for,
its wait running out, a handoff to another agent) is handled, and what it causes sent, in that
trace, with the record's own trace as a link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine

from charter import agents as agent_files
from charter import metrics, signing, store, subjects, telemetry, tools, topics
from charter.agents import Agent
from charter.bus import Bus
from charter.clock import Clock, SystemClock
from charter.config import Settings
from charter.errors import ForgedEvent, InvalidEvent
from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRejected,
    Event,
    KillSwitchSet,
    RunHandedOff,
    RunInstructed,
    RunStarted,
    RunWaiting,
    ToolUnavailable,
    TriggerReceived,
    WaitExpired,
)
from charter.killswitch import ControlFollower, SwitchStore
from charter.runtime.consumer import Mode
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Later, Outcome, Pipeline, Prepared, decode_all, settle
from charter.runtime.service import Parts
from charter.secrets import Secrets, guard_logs
from charter.topics import Topic
from charter.watch import DirectoryWatcher
from services.planner import coordinate, decide, reason
from services.planner import store as runs
from services.planner.batch import Batch, Batches
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
# Runs whose trace is kept in memory; beyond that the store is asked. About 400 bytes a run, so
# 10,000 is some 4 MB: more than the runs in flight at once (CHARTER_MAX_IN_FLIGHT, 1,000), and
# a long-running stack's memory stays flat. The least recently used goes first: emptying it
# all at once made every run in flight ask the store at the same moment.
TRACES_CACHED = 10_000
Headers = Sequence[tuple[str, bytes]]


class _Changed(Exception):
    pass


class Planner:
    def __init__(self, settings: Settings, engine: Engine, clock: Clock, model: ModelClient) -> None:
        self._settings = settings
        self._subject_fields = subjects.field_names(settings.subject_fields)
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
        self._signer = signing.Signer.load(settings.keys, NAME)
        self._own_key = self._signer.verifier
        self._approvals_key = signing.Verifier.load(settings.keys, "approvals")
        self._traces: OrderedDict[str, Headers] = OrderedDict()

    def _use(self, agents: Mapping[str, Agent]) -> None:
        self.agents = agents
        self._awaited |= {s.wait.event for a in agents.values() for s in a.steps if s.wait is not None}
        self._starting = {rule.event for a in agents.values() for rule in a.triggers}

    def trace_of(self, event: Event) -> Headers:
        """The trace of the run the event belongs to (none for one that starts runs)."""
        run = event.run_id
        if run is None and isinstance(event, TriggerReceived):
            if event.name not in self._awaited or event.name in self._starting:
                return ()
            with self._engine.connect() as conn:
                # A business event that a run waits for goes on with that run, in its trace.
                waiting = runs.waiting_for(conn, event.name, event.data)
            run = waiting[0] if waiting else None
        if run is None:
            return ()
        headers = self._traces.get(run)
        if headers is not None:
            self._traces.move_to_end(run)
        else:
            with self._engine.connect() as conn:
                headers = runs.traces.of(conn, run)
            if headers:
                self._remember(run, headers)
        return headers

    def _remember(self, run: str, headers: Headers) -> None:
        self._traces[run] = headers
        if len(self._traces) > TRACES_CACHED:
            self._traces.popitem(last=False)  # a miss reads the store: the cache only saves the query

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

    async def handle(self, event: Event, _delivery: Delivery) -> Outcome:
        """A record on its own, in a transaction of its own (a retry, a kill switch)."""
        return self._decided(event, 0, None)

    async def prepare_batch(self, pipeline: Pipeline, deliveries: Sequence[Delivery]) -> list[Prepared]:
        """Decide a batch of records through `pipeline`, in one transaction
        (services/planner/batch.py), committed before their outputs may be sent."""
        decoded = decode_all(deliveries)

        def work(batch: Batch | None) -> Awaitable[list[Prepared]]:
            async def in_batch(event: Event, _delivery: Delivery) -> Outcome:
                if batch is not None and batch.broken is not None:
                    return []  # the pass is given up: the batch is handled again, a record at a time
                try:
                    return self._decided(event, 0, batch)
                except Exception:
                    if batch is None or batch.broken is None:
                        raise  # outside a batch: the pipeline retries it, or dead-letters it
                    return []

            return pipeline.prepare_batch(deliveries, decoded, handler=in_batch)

        return await self._batches.run(decoded, work)

    def _decided(self, event: Event, conflicts: int, batch: Batch | None) -> Outcome:
        """The event's outputs, or, where a run must ask the model, the rest `Later`: the model
        thinks with no transaction open and apart from the batch, and what was read is checked
        before its answer is written."""
        with self._batches.begin(batch) as conn:
            done = self._batches.done(conn, event, batch)
            if done is not None:
                return done
            now = self._clock.now()
            if isinstance(event, KillSwitchSet):
                transitions = decide.on_kill_switch(event, runs.running(conn, event.scope_agent), now)
            else:
                transitions = self._decide(conn, event, now)
            if not any(t.think for t in transitions):
                return self._commit(conn, event, transitions, now, batch)
            seen = runs.snapshot(conn, [t.state.run_id for t in transitions])
        return Later(lambda: self._thought(event, transitions, seen, conflicts))

    async def _thought(
        self, event: Event, transitions: list[Transition], seen: dict[str, Any], conflicts: int
    ) -> Outcome:
        # The runs one event sets thinking (a trigger starting several) ask the model side by side.
        thought = list(await asyncio.gather(*(self._think(t, event) for t in transitions)))
        with self._batches.begin(None) as conn:
            done = self._batches.done(conn, event, None)
            if done is not None:
                return done
            if runs.snapshot(conn, list(seen)) == seen:
                return self._commit(conn, event, thought, self._clock.now(), None)
        # A run it changes changed while the model thought (a kill switch, say): decided again.
        if conflicts + 1 >= CONFLICT_RETRIES:
            raise RuntimeError(f"runs changed under {event.event_id} {CONFLICT_RETRIES} times in a row")
        log.info("a run %s changes changed meanwhile; deciding it again", event.event_id)
        return self._decided(event, conflicts + 1, None)

    def _commit(
        self, conn: Connection, event: Event, transitions: list[Transition], now: Any, batch: Batch | None
    ) -> list[Event]:
        for transition in transitions:
            runs.put(conn, transition.state, now)
            if any(isinstance(e, RunStarted) for e in transition.outputs):
                runs.traces.keep(conn, transition.state.run_id, telemetry.inject())
        outputs = [
            self._signer.sign(e) if isinstance(e, ActionProposed | RunHandedOff) else e
            for t in transitions
            for e in t.outputs
        ]
        self._batches.record(conn, event, outputs, now, batch)
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
                if not self._own_key.verify(event):
                    raise ForgedEvent(
                        f"handoff {event.event_id} to {event.to_agent} is not signed by the planner: "
                        "only a run hands off; no run started"
                    )
                target = self.agents.get(event.to_agent)
                if target is None:
                    raise InvalidEvent(f"handoff {event.event_id} is to unknown agent {event.to_agent}")
                candidates = [decide.run_id_for(coordinate.trigger_of(event), target)]
                existing = runs.existing(conn, candidates)
                transitions = decide.on_handoff(event, self.agents, existing, now, self._subject_fields)
            case RunInstructed():
                if not self._approvals_key.verify(event):
                    raise ForgedEvent(
                        f"{event.command} of run {event.run_id} claimed by {event.instructed_by!r} is not "
                        "signed by the approvals service: runs are resumed and cancelled through its API"
                    )
                transitions = self._on_instruction(conn, event, now)
            case WaitExpired() if not self._own_key.verify(event):
                raise ForgedEvent(f"WaitExpired {event.event_id} is not signed by the planner's timer")
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
        # A submitter is proven only by the API's signature: a business system writing to the
        # topic itself can name anyone.
        proven = trigger.submitted_by is None or self._approvals_key.verify(trigger)
        transitions = decide.on_trigger(
            trigger,
            self.agents,
            runs.existing(conn, candidates),
            now,
            proven=proven,
            subject_fields=self._subject_fields,
        )
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
                    expired.append((self._signer.sign(coordinate.expired(state, now)), attempt))
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


class Timer:
    """Publishes WaitExpired for the waits that have run out, every WAIT_TICK_S."""

    def __init__(self, planner: Planner, bus: Bus) -> None:
        self._planner = planner
        self._bus = bus

    async def run(self, stop: asyncio.Event) -> None:
        while not await _stopped(stop, WAIT_TICK_S):
            try:
                await self.expire_waits()
            except Exception:  # the next tick tries again: a wait is reported late, never lost
                log.exception("expiring waits failed")

    async def expire_waits(self) -> None:
        """Publish WaitExpired for each wait run out, then mark it reported. Published first:
        a crash in between publishes it again, under the same id."""
        expired = await self._planner.expire_waits()
        if not expired:
            return
        for event, _ in expired:
            # In the run's trace, as everything else the run does.
            with telemetry.continued(self._planner.trace_of(event)):
                await self._bus.publish(event)
        self._planner.fired(expired)


async def _stopped(stop: asyncio.Event, within_s: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), within_s)
    return stop.is_set()


def _model_client(settings: Settings) -> ModelClient:
    """The model server's client, holding its key and no other secret; the key is redacted from
    every line this process logs."""
    key = Secrets.load(settings.secrets_file).get(settings.llm_api_key_secret)
    secrets = Secrets({settings.llm_api_key_secret: key} if key else {})
    guard_logs(secrets)
    return ModelClient(settings, secrets)


async def build(settings: Settings, bus: Bus) -> Parts:
    engine = store.make_engine(settings.database_url_for(NAME))
    runs.create(engine)
    metrics.runs_in_flight.set_function(lambda: runs.in_flight(engine))
    planner = Planner(settings, engine, SystemClock(), _model_client(settings))
    pipeline = Pipeline(NAME, bus, planner.handle, SystemClock(), inline=False, trace_of=planner.trace_of)

    async def cancel(switch: KillSwitchSet) -> None:
        for event in await settle(planner.handle(switch, _NO_DELIVERY)):
            with telemetry.continued(planner.trace_of(event)):  # each cancellation in its run's trace
                await bus.publish(event)

    async def handle_batch(deliveries: list[Delivery]) -> list[Prepared]:
        return await planner.prepare_batch(pipeline, deliveries)

    async def watch_agents(stop: asyncio.Event) -> None:
        while not await _stopped(stop, 1.0):
            planner.reload_if_changed()

    async def close_model(stop: asyncio.Event) -> None:
        await stop.wait()
        await planner.close()

    return Parts(
        topics=[topics.name(settings, t) for t in TOPICS],
        handle_batch=handle_batch,
        background=[Timer(planner, bus).run, watch_agents, close_model],
        control=ControlFollower(
            settings,
            NAME,
            bus=bus,
            engine=engine,
            store=SwitchStore(engine, runs.switches),
            on_change=cancel,
        ),
        close=engine.dispose,
        mode=Mode.KEYED,
    )
