"""The policy service's adapter: proposals and human approvals in, decisions out.

It keeps the policy bundle and the agent registry in memory, reloading them when their files
change and announcing each load on `control` (the base policy set and each tenant's).
Live-limit usage is shared by replicas in the store: a batch is decided inside one serialized
transaction and published after it commits.
Every executable approval it sends is signed with its key; the executor runs nothing else.
A proposal the planner (or, amended by a person, the approvals service) did not sign is
dead-lettered as forged, undecided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine

from charter import agents as agent_files
from charter import metrics, signing, store, telemetry, tools, topics
from charter.agents import Agent
from charter.bus import Bus
from charter.clock import Clock, SystemClock, new_id
from charter.config import Settings
from charter.errors import ForgedEvent
from charter.events import ActionApproved, ActionProposed, Decision, Event, PolicyReloaded
from charter.killswitch import ControlFollower, SwitchStore
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Decoded, Pipeline, Prepared, decode_all
from charter.runtime.service import Parts
from charter.topics import Topic
from charter.watch import DirectoryWatcher
from services.policy import limits
from services.policy import store as policy_store
from services.policy.bundle import PATTERNS, PolicyBundle
from services.policy.decide import Context, decide, forged, revalidate, usage_keys

log = logging.getLogger(__name__)
_TRACER = telemetry.tracer("charter.policy")
NAME = "policy"


class _Batch:
    """The open transaction and usage snapshot one batch is decided in, and its decisions,
    recorded together when the batch ends."""

    def __init__(self, conn: Connection, usage: limits.Usage, recorded: dict[str, list[Event]]) -> None:
        self.conn = conn
        self.usage = usage
        # What the inbox held for the batch's events when it began, read in one query.
        self.recorded = recorded
        self.decided: dict[str, tuple[Event, list[Event]]] = {}
        self.used: set[str] = set()


class Policy:
    def __init__(self, settings: Settings, bus: Bus, engine: Engine, clock: Clock) -> None:
        self._settings = settings
        self._bus = bus
        self._engine = engine
        self._clock = clock
        self.tools = tools.load(settings.tool_module_list())
        self.agents: Mapping[str, Agent] = agent_files.load(settings.agents_dir, self.tools)
        self.bundle = PolicyBundle.load(settings.policies_dir)
        self._policy_files = DirectoryWatcher(settings.policies_dir, PATTERNS)
        self._agent_files = DirectoryWatcher(settings.agents_dir, ("*.yaml", "*.yml"))
        self.control = ControlFollower(
            settings, NAME, bus=bus, engine=engine, store=SwitchStore(engine, policy_store.switches)
        )
        # Policy reads `actions.approved` for the human approvals it must decide again; the
        # approvals it sent itself come back there too, and are skipped undecoded. A record whose
        # origin header is forged to look like policy's is skipped as well, and so never executed.
        approved = topics.name(settings, Topic.ACTIONS_APPROVED)
        own = bus.origin
        self.pipeline = Pipeline(
            NAME, bus, self.handle, clock, skip=lambda d: d.topic == approved and own in d.headers
        )
        self._batch: _Batch | None = None
        self._signer = signing.Signer.load(settings.keys, "policy")
        self._approvals_key = signing.Verifier.load(settings.keys, "approvals")
        self._planner_key = signing.Verifier.load(settings.keys, "planner")

    def context(self) -> Context:
        return Context(
            self.bundle,
            self.agents,
            self.tools,
            self.control.switches,
            self._approvals_key,
            self._planner_key,
        )

    async def handle_batch(self, deliveries: list[Delivery]) -> list[Prepared]:
        now = self._clock.now()
        wanted = self.pipeline.wanted(deliveries)
        if not wanted:
            return []
        decoded = decode_all(wanted)
        with store.serialized(self._engine, policy_store.LOCK) as conn:
            ids = [e.event_id for e in decoded if isinstance(e, Event)]
            self._batch = _Batch(
                conn, self._usage_for(conn, decoded, now), policy_store.inbox.outputs_of_many(conn, ids)
            )
            try:
                prepared = await self.pipeline.prepare_batch(wanted, decoded)
                policy_store.save_usage(conn, self._batch.usage)
                policy_store.inbox.record_many(conn, list(self._batch.decided.values()), now)
            finally:
                self._batch = None
        return prepared

    def _usage_for(self, conn: Connection, decoded: Sequence[Decoded], now: datetime) -> limits.Usage:
        keys: list[limits.CounterKey] = []
        ctx = self.context()
        for event in decoded:
            if isinstance(event, ActionProposed):
                keys += usage_keys(event, ctx, now)
        return policy_store.load_usage(conn, keys)

    async def handle(self, event: Event, _delivery: Delivery) -> Sequence[Event]:
        batch = self._batch
        if batch is None:
            raise RuntimeError("policy decisions happen inside a batch")
        if isinstance(event, ActionApproved) and not event.executable:
            return self._once(batch, event, lambda now: self._revalidate(batch, event, now))
        if isinstance(event, ActionProposed):
            ctx = self.context()
            why = forged(event, ctx)
            if why is not None:
                raise ForgedEvent(why)
            return self._once(batch, event, lambda now: decide(event, ctx, batch.usage, now))
        return []

    def _decided(self, event: Event, decision: Callable[[datetime], list[Event]]) -> list[Event]:
        """One decision, traced and counted."""
        kind = "revalidate" if isinstance(event, ActionApproved) else "decide"
        with (
            _TRACER.start_as_current_span(f"policy {kind}") as span,
            metrics.decide_seconds.time(),
        ):
            outputs = decision(self._clock.now())
            for out in outputs:
                ruling = getattr(out, "decision", None)
                if isinstance(ruling, Decision):
                    reason = ruling.limit or (ruling.policy_ids[0] if ruling.policy_ids else "no-permit")
                    metrics.decisions.labels(ruling.outcome, reason).inc()
                    span.set_attributes({"charter.decision": ruling.outcome, "charter.reason": reason})
            return outputs

    def _once(
        self, batch: _Batch, event: Event, decision: Callable[[datetime], list[Event]]
    ) -> Sequence[Event]:
        """The recorded outputs for a redelivered event; else decide (recorded at batch end)."""
        if event.event_id in batch.decided:
            return batch.decided[event.event_id][1]
        done = batch.recorded.get(event.event_id)
        if done is not None:
            return done
        outputs = [
            self._signer.sign(o) if isinstance(o, ActionApproved) else o
            for o in self._decided(event, decision)
        ]
        batch.decided[event.event_id] = (event, outputs)
        return outputs

    def _revalidate(self, batch: _Batch, approved: ActionApproved, now: datetime) -> list[Event]:
        approval = approved.approval_id or ""
        used = approval in batch.used or policy_store.approval_used(batch.conn, approval)
        outputs = revalidate(approved, self.context(), now, used=used)
        if approval and any(isinstance(o, ActionApproved) for o in outputs):
            batch.used.add(approval)
            policy_store.use_approval(batch.conn, approval, approved.event_id, now)
        return outputs

    async def announce(self) -> None:
        """One `PolicyReloaded` for the base set and one for each tenant's: the sets decisions
        name, each with the files that rebuild it."""
        for b in [self.bundle, *self.bundle.tenants.values()]:
            _log_load(b)
            await self._bus.publish(
                reloaded(b, b.tenant or self._settings.tenant, new_id(), self._clock.now())
            )

    async def watch(self, stop: asyncio.Event) -> None:
        await self.announce()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if self._agent_files.changed():
                try:
                    self.agents = agent_files.load(self._settings.agents_dir, self.tools)
                    log.info("agents reloaded: %s", ", ".join(sorted(self.agents)))
                except Exception as exc:
                    # Fail closed: with no agents known, every action is denied as unknown.
                    self.agents = {}
                    log.error("agents invalid, denying every action until fixed: %s", exc)
            if self._policy_files.changed():
                self.bundle = PolicyBundle.load(self._settings.policies_dir)
                await self.announce()


def reloaded(bundle: PolicyBundle, tenant: str, event_id: str, now: datetime) -> PolicyReloaded:
    """The announcement of one policy set, with the files that rebuild it (the audit's replay does)."""
    return PolicyReloaded.create(
        event_id=event_id,
        now=now,
        tenant=tenant,
        correlation_id=bundle.hash,
        policy_hash=bundle.hash,
        policy_ids=sorted(bundle.infos),
        files=list(bundle.files),
        valid=bundle.error is None,
        error=bundle.error,
        sources=bundle.sources,
    )


def _log_load(b: PolicyBundle) -> None:
    whose = f" for tenant {b.tenant}" if b.tenant is not None else ""
    if b.error:
        log.error(
            "policy bundle %s%s is invalid, every action will be denied: %s", b.hash[:12], whose, b.error
        )
    else:
        log.info(
            "policy bundle %s%s loaded: %d policies from %s",
            b.hash[:12],
            whose,
            len(b.infos),
            ", ".join(b.files),
        )


async def build(settings: Settings, bus: Bus) -> Parts:
    engine = store.make_engine(settings.database_url_for(NAME))
    policy_store.create(engine)
    policy = Policy(settings, bus, engine, SystemClock())
    return Parts(
        topics=[topics.name(settings, Topic.ACTIONS_PROPOSED), topics.name(settings, Topic.ACTIONS_APPROVED)],
        handle_batch=policy.handle_batch,
        background=[policy.watch],
        control=policy.control,
        close=engine.dispose,
    )
