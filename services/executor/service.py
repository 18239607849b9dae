"""The executor's adapter: plan from the store, record `started`, call, record the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from opentelemetry import trace
from sqlalchemy import Connection, Engine

from charter import metrics, signing, store, telemetry, tools, topics
from charter.breaker import Breakers
from charter.bus import Bus
from charter.clock import Clock, SystemClock
from charter.config import Settings
from charter.consumer import Delivery
from charter.errors import ForgedEvent, RetryPolicy
from charter.events import ActionApproved, ActionExecuted, ActionFailed, Event
from charter.killswitch import ControlFollower, SwitchStore, matching
from charter.pipeline import Pipeline, decode_all
from charter.secrets import MissingSecret, Secrets, guard_logs
from charter.service import Parts
from charter.tools import Registry, ToolContext, ToolSpec
from charter.topics import Topic
from services.executor import decide, egress
from services.executor import store as executions
from services.executor.tools import NOT_REACHED, Limits, ToolFailure, call

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
    the outcomes decided since and not yet written. An outcome must be durable before it is
    sent, not before the next call, so outcomes are written together: with the next `started`
    record (one transaction a call, as the guarantee needs), before a wait, or when the batch
    ends."""

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
        self._batch: _Batch | None = None
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

    async def handle_batch(self, pipeline: Pipeline, deliveries: Sequence[Delivery]) -> None:
        """A batch's records in order, what the store knows of them read in one query, their
        outcomes written in as few transactions as the guarantee allows; then sent."""
        decoded = decode_all(deliveries)
        keys = [decide.idempotency_key(e) for e in decoded if isinstance(e, ActionApproved) and e.executable]
        with self._engine.connect() as conn:
            batch = _Batch(executions.get_many(conn, keys))
        self._batch = batch
        try:
            prepared = await pipeline.prepare_batch(deliveries, decoded)
            self._write_outcomes()
        finally:
            self._batch = None
        await pipeline.publish(prepared)

    def _write_outcomes(self, conn: Connection | None = None) -> None:
        """Write the batch's outcomes not yet written: in `conn`'s transaction (the caller marks
        them flushed once it commits), or in one of their own."""
        if self._batch is None or not self._batch.outcomes:
            return
        if conn is None:
            with self._engine.begin() as own:
                executions.save_outcomes(own, list(self._batch.outcomes.values()), self._clock.now())
            self._batch.flushed()
            return
        executions.save_outcomes(conn, list(self._batch.outcomes.values()), self._clock.now())

    def _record(self, key: str, *, fresh: bool) -> decide.Execution | None:
        batch = self._batch
        if batch is not None and key in batch.outcomes:
            _, attempts, outcome = batch.outcomes[key]
            return decide.Execution("completed", attempts, outcome)
        if batch is not None and not fresh:
            return batch.known.get(key)
        with self._engine.connect() as conn:
            return executions.get(conn, key)

    def _completed(self, event: ActionApproved, attempts: int, outcome: Event) -> None:
        if self._batch is not None:
            self._batch.outcomes[decide.idempotency_key(event)] = (event, attempts, outcome)
            return
        with self._engine.begin() as conn:
            executions.save(conn, event, attempts, self._clock.now(), outcome)

    async def handle(self, event: Event, _delivery: Delivery) -> Sequence[Event]:
        # A human's approval runs only once policy has decided it again (revalidated).
        if not isinstance(event, ActionApproved) or not event.executable:
            return []
        if not self._policy_key.verify(event):
            # Whoever wrote it to the topic, the policy service did not decide it.
            raise ForgedEvent(f"approval {event.event_id} is not signed by the policy service; not executed")
        key = decide.idempotency_key(event)
        spec = self._registry.get(event.action.tool)
        fresh = False
        while True:
            record = self._record(key, fresh=fresh)
            plan = decide.plan(record, spec is not None and spec.idempotent)
            if plan.recorded is not None:
                log.info("action %s already completed, re-emitting its outcome", key)
                return [plan.recorded]
            try:
                outcome = await self._outcome(event, spec, plan, record, fresh=fresh)
                break
            except Stale:
                fresh = True
            except Held:
                # Another replica is calling it (a rebalance handed us the same record): its
                # outcome, or the end of its lease, comes before anything we would do. What
                # this batch has decided is written first: none of it waits on that.
                log.info("action %s is held by another replica; waiting", key)
                self._write_outcomes()
                await asyncio.sleep(HELD_POLL_S)
                fresh = True
        self._completed(event, plan.attempt, outcome)
        return [outcome]

    async def _outcome(
        self,
        event: ActionApproved,
        spec: ToolSpec | None,
        plan: decide.Plan,
        record: decide.Execution | None,
        *,
        fresh: bool,
    ) -> Event:
        """The action's outcome: called, or why not. `record`, what the plan was made on, is
        checked against the store before the call (and, unless `fresh`, before any outcome)."""
        now = self._clock.now()
        ctx = self._admitted(event, spec, plan, now)
        if not isinstance(ctx, ToolContext):
            if not fresh:
                raise Stale  # an outcome decided on the batch's guess must be decided on the store's
            return ctx
        assert spec is not None  # an unknown tool is not admitted
        try:
            self._started(event, spec, plan, record, now)
            return await self._call(spec, event, ctx, plan.attempt)
        finally:
            # A probe that ended neither in success nor in failure gives its slot back.
            self._breakers.release(spec.name)

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
        """The outcome of an action its tool must not be called for, if it is one."""
        switch = matching(self._switches.switches, event.envelope.agent, event.action.tool)
        if switch is not None:
            if plan.kind == "call" and plan.attempt == 1:
                # Approved before the switch, still queued: refused, never started.
                return decide.refused(event, switch.describe(), now)
            # Started before the switch and never finished: it may have acted, and is not called again.
            return decide.failed(event, decide.IN_DOUBT, "InDoubt", plan.attempt, now, in_doubt=True)
        if spec is None:
            return decide.failed(
                event, f"unknown tool {event.action.tool!r}", "UnknownTool", plan.attempt, now
            )
        if plan.kind == "in_doubt":
            return decide.failed(event, decide.IN_DOUBT, "InDoubt", plan.attempt, now, in_doubt=True)
        return None

    def _started(
        self,
        event: ActionApproved,
        spec: ToolSpec,
        plan: decide.Plan,
        record: decide.Execution | None,
        now: datetime,
    ) -> None:
        """Claim the key and record it `started`, committed, with the batch's pending outcomes.
        The key is read again once claimed: a replica that completed it meanwhile has let its
        claim go, and what it recorded must not be written over, nor its call repeated."""
        key = decide.idempotency_key(event)
        until = now + timedelta(seconds=_lease_s(spec))
        with self._engine.begin() as conn:
            if not executions.claim(conn, key, self._settings.instance, now, until):
                raise Held
            if not _same(executions.get(conn, key), record):
                raise Stale
            executions.save(conn, event, plan.attempt, now)
            self._write_outcomes(conn)
        if self._batch is not None:
            self._batch.flushed()
            self._batch.known[key] = decide.Execution("started", plan.attempt, None)

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
        self, spec: ToolSpec, approved: ActionApproved, ctx: ToolContext, attempt: int
    ) -> ActionExecuted | ActionFailed:
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
                error = self._secrets.redact(str(exc))
                # Only an idempotent tool, or a call that certainly did not act, is called again.
                again = exc.retryable and (spec.idempotent or exc.unsent)
                if (
                    again
                    and tries < spec.max_attempts
                    and self._breakers.admit(spec.name, time.monotonic()) is None
                ):
                    log.warning("%s attempt %d failed, retrying: %s", spec.name, tries, error)
                    metrics.tool_retries.labels(spec.name).inc()
                    await asyncio.sleep(TOOL_RETRY.jittered(tries))
                    continue
                attempts, now = attempt + tries - 1, self._clock.now()
                metrics.tool_calls.labels(spec.name, "in_doubt" if exc.in_doubt else "failed").inc()
                if exc.in_doubt:
                    doubt = decide.CALL_IN_DOUBT if not spec.idempotent else decide.CALL_IN_DOUBT_IDEMPOTENT
                    message = doubt.format(error=error)
                    return decide.failed(approved, message, exc.error_type, attempts, now, in_doubt=True)
                return decide.failed(approved, error, exc.error_type, attempts, now)
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
    executor = Executor(settings, engine, tools.load(settings.tool_module_list()), clock, control, secrets)
    pipeline = Pipeline(NAME, bus, executor.handle, clock)

    async def handle_batch(deliveries: list[Delivery]) -> None:
        await executor.handle_batch(pipeline, deliveries)

    async def close_http(stop: asyncio.Event) -> None:
        await stop.wait()
        await executor.close()

    return Parts(
        topics=[topics.name(settings, Topic.ACTIONS_APPROVED)],
        handle_batch=handle_batch,
        background=[close_http],
        control=control,
        close=engine.dispose,
    )
