"""The executor's adapter: plan from the store, record `started`, call, record the outcome.

A batch decides, for each action, on what the store knew of it when the batch began; the calls
themselves are left `Later`, so the runtime runs them side by side, each run's in order, and a
slow tool holds up no other run. A call claims its key and records `started` only once it has a
slot of its tool's `max_concurrency`, checking then what its plan was made on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from opentelemetry import trace
from sqlalchemy import Engine

from charter import metrics, signing, store, telemetry, tools, topics
from charter.breaker import Breakers
from charter.bus import Bus
from charter.clock import Clock, SystemClock
from charter.config import Settings
from charter.errors import ConfigError, ForgedEvent, RetryPolicy
from charter.events import ActionApproved, ActionExecuted, ActionFailed, Event
from charter.killswitch import ControlFollower, SwitchStore, matching
from charter.runtime.consumer import Mode
from charter.runtime.delivery import Delivery
from charter.runtime.group import GroupWriter
from charter.runtime.pipeline import Later, Outcome, Pipeline, Prepared, decode_all
from charter.runtime.service import Parts
from charter.secrets import MissingSecret, Secrets, guard_logs
from charter.tools import Registry, ToolContext, ToolSpec
from charter.topics import Topic
from services.executor import decide, egress
from services.executor import store as executions
from services.executor.failure import ToolFailure
from services.executor.tools import NOT_REACHED, Limits, call

log = logging.getLogger(__name__)
_TRACER = telemetry.tracer("charter.executor")
NAME = "executor"
# Full jitter: replicas retrying the same down system do not come back in step.
TOOL_RETRY = RetryPolicy(attempts=3, first_delay_s=0.2, max_delay_s=2.0)


HELD_POLL_S = 0.2
LEASE_MARGIN_S = 5.0


class Held(Exception):
    """Another replica holds the action's claim."""


class Stale(Exception):
    """The store knows more of the action than its batch read: plan it again from the store."""


@dataclass
class _Batch:
    """The records of one batch: what the store knew of their keys when it began (a guess, to
    be checked before anything is done on it: another replica may act on a key meanwhile), and
    the outcomes decided without a call since, written together when the batch ends (an outcome
    must be durable before it is sent, not before the next record is decided)."""

    known: dict[str, decide.Execution]
    outcomes: dict[str, tuple[ActionApproved, int, Event]] = field(default_factory=dict)

    def flushed(self) -> None:
        """The pending outcomes are written: their keys are `completed`."""
        for done, (_, tries, outcome) in self.outcomes.items():
            self.known[done] = decide.Execution("completed", tries, outcome)
        self.outcomes.clear()


def _same(a: decide.Execution | None, b: decide.Execution | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.status, a.attempts) == (b.status, b.attempts)


async def _backoff(delay_s: float, slot: asyncio.Semaphore | None) -> None:
    """Wait `delay_s` without the slot, and have it again after."""
    if slot is not None:
        slot.release()
    try:
        await asyncio.sleep(delay_s)
    finally:
        if slot is not None:
            await slot.acquire()


def _lease_s(spec: ToolSpec) -> float:
    """Long enough for every attempt and the waits between them; a crashed holder's lease ends."""
    return spec.max_attempts * (spec.timeout_s + TOOL_RETRY.max_delay_s) + LEASE_MARGIN_S


class Executor:
    def __init__(  # noqa: PLR0917 (its collaborators, each a different type)
        self,
        settings: Settings,
        engine: Engine,
        registry: Registry,
        clock: Clock,
        switches: ControlFollower,
        secrets: Secrets,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._registry = registry
        self._clock = clock
        self._switches = switches
        self._secrets = secrets
        self._policy_key = signing.Verifier.load(settings.keys, "policy")
        self._limits = Limits(max_result_bytes=settings.max_message_bytes // 2)
        self._slots: dict[str, asyncio.Semaphore] = {}
        # The outcomes of calls that end together are written in one transaction.
        self._outcomes = GroupWriter[tuple[ActionApproved, int, Event]](self._save_outcomes)
        self._breakers = Breakers(settings.breaker_failures, settings.breaker_cooldown_s)
        private = settings.private_networks()
        # One client per HTTP tool: each has its own egress rule and connection pool.
        self._http = {
            spec.name: egress.client(egress.Rule.of(spec.http.allowed_hosts, [*spec.http.private, *private]))
            for spec in registry.values()
            if spec.http is not None
        }

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._http.values()))

    async def handle_batch(self, pipeline: Pipeline, deliveries: Sequence[Delivery]) -> list[Prepared]:
        """A batch's records in order, what the store knows of them read in one query, the
        outcomes decided without a call written together; the calls are left to run later."""
        decoded = decode_all(deliveries)
        keys = [decide.idempotency_key(e) for e in decoded if isinstance(e, ActionApproved) and e.executable]
        with self._engine.connect() as conn:
            batch = _Batch(executions.get_many(conn, keys))

        async def in_batch(event: Event, _delivery: Delivery) -> Outcome:
            return self._handle(event, batch)

        prepared = await pipeline.prepare_batch(deliveries, decoded, handler=in_batch)
        self._write_outcomes(batch)
        return prepared

    def _write_outcomes(self, batch: _Batch) -> None:
        """Write the batch's outcomes not yet written, in one transaction."""
        if not batch.outcomes:
            return
        self._save_outcomes(list(batch.outcomes.values()))
        batch.flushed()

    def _record(self, key: str, batch: _Batch | None, *, fresh: bool) -> decide.Execution | None:
        """What is known of `key`: what the batch decided, else its guess (unless `fresh`), else
        the store's word."""
        if batch is not None and key in batch.outcomes:
            _, attempts, outcome = batch.outcomes[key]
            return decide.Execution("completed", attempts, outcome)
        if batch is not None and not fresh:
            return batch.known.get(key)
        with self._engine.connect() as conn:
            return executions.get(conn, key)

    def _completed(self, event: ActionApproved, attempts: int, outcome: Event, batch: _Batch | None) -> None:
        if batch is not None:
            batch.outcomes[decide.idempotency_key(event)] = (event, attempts, outcome)
            return
        with self._engine.begin() as conn:
            executions.save(conn, event, attempts, self._clock.now(), outcome)

    async def handle(self, event: Event, _delivery: Delivery) -> Outcome:
        """A record on its own, decided on the store (a retry, or a record outside a batch)."""
        return self._handle(event, None)

    def _handle(self, event: Event, batch: _Batch | None) -> Outcome:
        # A human's approval runs only once policy has decided it again (revalidated).
        if not isinstance(event, ActionApproved) or not event.executable:
            return []
        spec = self._registry.get(event.action.tool)
        if (spec.pool if spec is not None else None) != (self._settings.executor_pool or None):
            return []  # another pool's executors run it (an unknown tool is the general pool's to fail)
        if not self._policy_key.verify(event):
            # Whoever wrote it to the topic, the policy service did not decide it.
            raise ForgedEvent(f"approval {event.event_id} is not signed by the policy service; not executed")
        return self._plan(event, batch)

    def _plan(self, event: ActionApproved, batch: _Batch | None, *, fresh: bool = False) -> Outcome:
        """The outcome of an action that needs no call, or the call, to be made `Later`. In a
        batch, and not `fresh`, it is decided on what the batch read: a guess, so an outcome
        decided without a call is decided again on the store."""
        key = decide.idempotency_key(event)
        spec = self._registry.get(event.action.tool)
        record = self._record(key, batch, fresh=fresh)
        plan = decide.plan(record, spec is not None and spec.idempotent)
        if plan.recorded is not None:
            log.info("action %s already completed, re-emitting its outcome", key)
            return [plan.recorded]
        ctx = self._admitted(event, spec, plan, self._clock.now())
        if not isinstance(ctx, ToolContext):
            if batch is not None and not fresh:
                return self._plan(event, batch, fresh=True)
            self._completed(event, plan.attempt, ctx, batch)
            return [ctx]
        assert spec is not None  # an unknown tool is not admitted
        return Later(lambda: self._execute(event, spec, plan, record, ctx))

    async def _execute(
        self,
        event: ActionApproved,
        spec: ToolSpec,
        plan: decide.Plan,
        record: decide.Execution | None,
        ctx: ToolContext,
    ) -> Outcome:
        """Call the tool, once it has a slot: claim the key and record it `started` (checked
        against what the plan was made on), call, record the outcome. With the slot's wait
        behind it, a kill switch set meanwhile is seen before the call."""
        slot = self._slot(spec)
        try:
            async with slot or contextlib.nullcontext():
                if matching(self._switches.switches, event.envelope.agent, event.action.tool) is not None:
                    return self._plan(event, None)
                try:
                    self._started(event, spec, plan, record, self._clock.now())
                except Stale:
                    return self._plan(event, None)
                except Held:
                    # Another replica is calling it (a rebalance handed us the same record): its
                    # outcome, or the end of its lease, comes before anything we would do.
                    log.info("action %s is held by another replica; waiting", decide.idempotency_key(event))
                    return Later(lambda: self._after_held(event))
                outcome = await self._call(spec, event, ctx, plan.attempt, slot)
        finally:
            # A probe that ended neither in success nor in failure gives its slot back.
            self._breakers.release(spec.name)
        await self._outcomes.put((event, plan.attempt, outcome))
        return [outcome]

    def _save_outcomes(self, outcomes: list[tuple[ActionApproved, int, Event]]) -> None:
        with self._engine.begin() as conn:
            executions.save_outcomes(conn, outcomes, self._clock.now())

    async def _after_held(self, event: ActionApproved) -> Outcome:
        await asyncio.sleep(HELD_POLL_S)
        return self._plan(event, None)

    def _slot(self, spec: ToolSpec) -> asyncio.Semaphore | None:
        """The tool's slots, if it declares `max_concurrency`: one is held for each attempt."""
        if spec.max_concurrency is None:
            return None
        slots = self._slots.get(spec.name)
        if slots is None:
            slots = self._slots[spec.name] = asyncio.Semaphore(spec.max_concurrency)
        return slots

    def _admitted(
        self, event: ActionApproved, spec: ToolSpec | None, plan: decide.Plan, now: datetime
    ) -> ToolContext | Event:
        """The call's context, if the tool may be called now (with a slot of its circuit, which
        the caller gives back); else the outcome of not calling it."""
        uncalled = self._uncalled(event, spec, plan, now)
        if uncalled is not None:
            return uncalled
        assert spec is not None  # an unknown tool is not called
        try:
            ctx = self._context(spec, event)
        except MissingSecret as exc:
            return decide.failed(event, str(exc), "MissingSecret", plan.attempt, now)
        refusal = self._breakers.admit(spec.name, time.monotonic())
        if refusal is not None:
            return decide.unavailable(event, refusal.failures, refusal.retry_after_s, now)
        return ctx

    def _uncalled(
        self, event: ActionApproved, spec: ToolSpec | None, plan: decide.Plan, now: datetime
    ) -> Event | None:
        switch = matching(self._switches.switches, event.envelope.agent, event.action.tool)
        return decide.uncalled(event, plan, now, switch=switch, tool_known=spec is not None)

    def _started(
        self,
        event: ActionApproved,
        spec: ToolSpec,
        plan: decide.Plan,
        record: decide.Execution | None,
        now: datetime,
    ) -> None:
        """Claim the key and record it `started`, committed. The key is read again once claimed:
        a replica that completed it meanwhile has let its claim go, and what it recorded must
        not be written over, nor its call repeated."""
        key = decide.idempotency_key(event)
        until = now + timedelta(seconds=_lease_s(spec))
        with self._engine.begin() as conn:
            if not executions.claim(conn, key, self._settings.instance, now, until):
                raise Held
            if not _same(executions.get(conn, key), record):
                raise Stale
            executions.save(conn, event, plan.attempt, now)

    def _context(self, spec: ToolSpec, approved: ActionApproved) -> ToolContext:
        return ToolContext(
            idempotency_key=decide.idempotency_key(approved),
            run_id=approved.envelope.run_id or "",
            agent=approved.envelope.agent or "",
            environment=approved.action.environment,
            data_dir=self._settings.data_dir,
            dry_run=self._settings.dry_run(approved.action.environment),
            secrets=self._secrets.resolve(spec.secrets),
        )

    async def _call(
        self,
        spec: ToolSpec,
        approved: ActionApproved,
        ctx: ToolContext,
        attempt: int,
        slot: asyncio.Semaphore | None,
    ) -> ActionExecuted | ActionFailed:
        """Call the tool, again while a failure allows; `slot` (held by the caller) is let go
        for each retry's backoff, so the wait keeps no other run from the tool."""
        tries = 0
        while True:
            tries += 1
            started = time.perf_counter()
            try:
                with _TRACER.start_as_current_span(
                    f"tool {spec.name}",
                    kind=trace.SpanKind.CLIENT,
                    attributes={"charter.tool": spec.name, "charter.attempt": attempt + tries - 1},
                ):
                    result = await call(
                        spec,
                        approved.action.parameters,
                        ctx,
                        http=self._http.get(spec.name),
                        limits=self._limits,
                    )
            except ToolFailure as exc:
                self._observe(spec, exc)
                metrics.tool_seconds.labels(spec.name).observe(time.perf_counter() - started)
                failure = decide.Failure(
                    self._secrets.redact(str(exc)), exc.error_type, exc.retryable, exc.in_doubt, exc.unsent
                )
                if (
                    decide.call_again(
                        failure, idempotent=spec.idempotent, tries=tries, max_attempts=spec.max_attempts
                    )
                    and self._breakers.admit(spec.name, time.monotonic()) is None
                ):
                    log.warning("%s attempt %d failed, retrying: %s", spec.name, tries, failure.error)
                    metrics.tool_retries.labels(spec.name).inc()
                    await _backoff(TOOL_RETRY.jittered(tries), slot)
                    continue
                metrics.tool_calls.labels(spec.name, "in_doubt" if exc.in_doubt else "failed").inc()
                attempts, now = attempt + tries - 1, self._clock.now()
                return decide.gave_up(approved, failure, attempts, now, idempotent=spec.idempotent)
            if not (ctx.dry_run and spec.dry_run != "call"):  # a dry run did not reach the tool
                self._breakers.succeeded(spec.name)
            elapsed_ms = (time.perf_counter() - started) * 1000
            metrics.tool_seconds.labels(spec.name).observe(elapsed_ms / 1000)
            metrics.tool_calls.labels(spec.name, "dry_run" if ctx.dry_run else "executed").inc()
            return decide.executed(
                approved,
                self._secrets.redact(result),
                elapsed_ms,
                attempt + tries - 1,
                self._clock.now(),
                dry_run=ctx.dry_run,
            )

    def _observe(self, spec: ToolSpec, failure: ToolFailure) -> None:
        if failure.transient:
            self._breakers.failed(spec.name, time.monotonic())
        elif failure.error_type not in NOT_REACHED:
            self._breakers.succeeded(spec.name)  # it answered, if only to refuse: it is up


async def build(settings: Settings, bus: Bus) -> Parts:
    engine = store.make_engine(settings.database_url_for(NAME))
    executions.create(engine)
    clock = SystemClock()
    control = ControlFollower(
        settings, NAME, bus=bus, engine=engine, store=SwitchStore(engine, executions.switches)
    )
    secrets = Secrets.load(settings.secrets_file)
    guard_logs(secrets)
    registry = tools.load(settings.tool_module_list())
    pool = settings.executor_pool
    if pool and not any(spec.pool == pool for spec in registry.values()):
        # Its tools' modules not loaded: it would leave their actions to executors that skip them.
        raise ConfigError(
            f"CHARTER_EXECUTOR_POOL={pool}, but no tool of CHARTER_TOOL_MODULES declares that pool"
        )
    executor = Executor(settings, engine, registry, clock, control, secrets)
    pipeline = Pipeline(NAME, bus, executor.handle, clock, inline=False)
    # Synchronous tools run in threads: as many at once as may be called at once.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=settings.tool_threads, thread_name_prefix="tool")
    )

    async def handle_batch(deliveries: list[Delivery]) -> list[Prepared]:
        return await executor.handle_batch(pipeline, deliveries)

    async def close_http(stop: asyncio.Event) -> None:
        await stop.wait()
        await executor.close()

    return Parts(
        topics=[topics.name(settings, Topic.ACTIONS_APPROVED)],
        handle_batch=handle_batch,
        background=[close_http],
        control=control,
        close=engine.dispose,
        mode=Mode.KEYED,
    )
