"""The executor's adapter: plan from the store, record `started`, call, record the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import httpx
from sqlalchemy import Engine

from charter import signing, store, tools, topics
from charter.bus import Bus
from charter.clock import Clock, SystemClock
from charter.config import Settings
from charter.consumer import Delivery
from charter.errors import ForgedEvent, RetryPolicy
from charter.events import ActionApproved, ActionExecuted, ActionFailed, Event
from charter.killswitch import ControlFollower, SwitchStore, matching
from charter.pipeline import Pipeline
from charter.service import Parts
from charter.tools import Registry, ToolContext, ToolSpec
from charter.topics import Topic
from services.executor import decide
from services.executor import store as executions
from services.executor.tools import ToolFailure, call

log = logging.getLogger(__name__)
NAME = "executor"
TOOL_RETRY = RetryPolicy(attempts=3, first_delay_s=0.2, max_delay_s=2.0)


class Executor:
    def __init__(
        self, settings: Settings, engine: Engine, registry: Registry, clock: Clock, switches: ControlFollower
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._registry = registry
        self._clock = clock
        self._switches = switches
        self._policy_key = signing.Verifier.load(settings.keys, "policy")
        self._http = httpx.AsyncClient(follow_redirects=False)
        self._allowed_hosts = settings.allowed_hosts()

    async def close(self) -> None:
        await self._http.aclose()

    async def handle(self, event: Event, _delivery: Delivery) -> Sequence[Event]:
        # A human's approval runs only once policy has decided it again (revalidated).
        if not isinstance(event, ActionApproved) or not event.executable:
            return []
        if not self._policy_key.verify(event):
            # Whoever wrote it to the topic, the policy service did not decide it.
            raise ForgedEvent(f"approval {event.event_id} is not signed by the policy service; not executed")
        key = decide.idempotency_key(event)
        spec = self._registry.get(event.action.tool)
        with self._engine.begin() as conn:
            record = executions.get(conn, key)
        plan = decide.plan(record, spec is not None and spec.idempotent)
        if plan.recorded is not None:
            log.info("action %s already completed, re-emitting its outcome", key)
            return [plan.recorded]
        now = self._clock.now()
        switch = matching(self._switches.switches, event.envelope.agent, event.action.tool)
        outcome: Event
        attempts = plan.attempt
        if switch is not None:
            # Approved before the switch, still queued: refused, never started.
            outcome, attempts = decide.refused(event, switch.describe(), now), 0
        elif spec is None:
            outcome = decide.failed(
                event, f"unknown tool {event.action.tool!r}", "UnknownTool", plan.attempt, now
            )
        elif plan.kind == "in_doubt":
            outcome = decide.failed(event, decide.IN_DOUBT, "InDoubt", plan.attempt, now, in_doubt=True)
        else:
            with self._engine.begin() as conn:
                executions.save(conn, event, plan.attempt, now)
            called = await self._call(spec, event, key, plan.attempt)
            outcome, attempts = called, called.attempts
        with self._engine.begin() as conn:
            executions.save(conn, event, attempts, self._clock.now(), outcome)
        return [outcome]

    async def _call(
        self, spec: ToolSpec, approved: ActionApproved, key: str, attempt: int
    ) -> ActionExecuted | ActionFailed:
        ctx = ToolContext(
            idempotency_key=key,
            run_id=approved.envelope.run_id or "",
            agent=approved.envelope.agent or "",
            environment=approved.action.environment,
            data_dir=self._settings.data_dir,
        )
        tries = 0
        while True:
            tries += 1
            started = time.perf_counter()
            try:
                result = await call(
                    spec,
                    approved.action.parameters,
                    ctx,
                    http=self._http,
                    allowed_hosts=self._allowed_hosts,
                    max_result_bytes=self._settings.max_message_bytes // 2,
                )
            except ToolFailure as exc:
                # Only an idempotent tool may be called again: the failed call may have acted.
                if exc.retryable and spec.idempotent and tries < TOOL_RETRY.attempts:
                    log.warning("%s attempt %d failed, retrying: %s", spec.name, tries, exc)
                    await asyncio.sleep(TOOL_RETRY.delay(tries))
                    continue
                return decide.failed(
                    approved, str(exc), exc.error_type, attempt + tries - 1, self._clock.now()
                )
            elapsed_ms = (time.perf_counter() - started) * 1000
            return decide.executed(approved, result, elapsed_ms, attempt + tries - 1, self._clock.now())


async def build(settings: Settings, bus: Bus) -> Parts:
    engine = store.make_engine(settings.database_url_for(NAME))
    executions.create(engine)
    clock = SystemClock()
    control = ControlFollower(
        settings, NAME, bus=bus, engine=engine, store=SwitchStore(engine, executions.switches)
    )
    executor = Executor(settings, engine, tools.load(settings.tool_module_list()), clock, control)
    pipeline = Pipeline(NAME, bus, executor.handle, clock)

    async def close_http(stop: asyncio.Event) -> None:
        await stop.wait()
        await executor.close()

    return Parts(
        topics=[topics.name(settings, Topic.ACTIONS_APPROVED)],
        handle_batch=pipeline.process_batch,
        background=[close_http],
        control=control,
        close=engine.dispose,
    )
