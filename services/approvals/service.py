"""The approvals service's adapter: records requests, applies humans' decisions and expiries,
once each, and serves the HTTP API and console (app.py) beside its consumer.

Decisions reach it only through its own topic, `approvals.decided`, whoever took them (the
console, the CLI, the API on another replica), each signed by the API that authenticated the
person; a decision without a valid signature is dead-lettered as forged. Background tasks
expire approvals nobody decided in time, and deliver webhook notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from charter import metrics, serde, signing, store, telemetry, topics
from charter.binding import action_hash
from charter.bus import Bus
from charter.clock import Clock, SystemClock, derive_id
from charter.config import Settings
from charter.describe import describe
from charter.errors import ForgedEvent, InvalidEvent
from charter.events import (
    RUN_TERMINAL,
    ActionApproved,
    ActionProposed,
    ApprovalAmended,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    Event,
    RunEscalated,
)
from charter.http_server import HttpServer
from charter.identity import tokens
from charter.identity.oidc import OidcVerifier
from charter.identity.principal import Authenticator
from charter.identity.users import WatchedDirectory
from charter.killswitch import ControlFollower, SwitchStore
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Pipeline
from charter.runtime.service import Parts
from charter.topics import Topic
from services.approvals import decide, notify
from services.approvals import store as approvals
from services.approvals.api import ApiContext
from services.approvals.app import create_app
from services.approvals.metrics import Metrics
from services.audit import store as audit_store

log = logging.getLogger(__name__)
_TRACER = telemetry.tracer("charter.approvals")
NAME = "approvals"
SWEEP_S = 1.0
RESEND_S = 10.0


class Approvals:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        clock: Clock,
        users: WatchedDirectory,
        notifier: notify.Notifier,
        metrics: Metrics,
        signer: signing.Signer,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._users = users
        self._notifier = notifier
        self._metrics = metrics
        self._signer = signer
        self._key = signing.Verifier.load(settings.keys, NAME)

    async def handle(self, event: Event, _delivery: Delivery) -> Sequence[Event]:
        match event:
            case ApprovalRequested():
                self._requested(event)
            case ApprovalGranted() | ApprovalRejected() | ApprovalAmended() | ApprovalExpired():
                return self._decided(event)
            case _ if isinstance(event, RUN_TERMINAL) and event.run_id:
                self._run_ended(event)
        return []

    def _requested(self, request: ApprovalRequested) -> None:
        expected = action_hash(request.action, request.envelope.run_id or "", request.decision.policy_hash)
        if request.action_hash != expected:
            raise InvalidEvent(
                f"approval request {request.approval_id} is not bound to the action it carries"
            )
        now = self._clock.now()
        # The policy's @expires, else the service's default: never a longer wait than policy asked.
        timeout = request.decision.approval_timeout_s or self._settings.approval_timeout_s
        expires_at = request.envelope.occurred_at + timedelta(seconds=timeout)
        with self._engine.begin() as conn:
            added = approvals.add(conn, request, expires_at)
            if added:
                approvals.keep_trace(conn, request.approval_id, telemetry.inject())
            if added and self._notifier.enabled:
                payload = notify.approval_requested(request, expires_at, self._settings.console_url)
                notify.enqueue(conn, derive_id(request.event_id, "notify"), payload, now)

    def _run_ended(self, event: Event) -> None:
        # A run that ended (cancelled by a kill switch, say) has nothing left to approve.
        now = self._clock.now()
        with self._engine.begin() as conn:
            approvals.withdraw(
                conn, event.run_id or "", f"run ended: {describe(event)}", event.envelope.occurred_at
            )
            if isinstance(event, RunEscalated) and self._notifier.enabled:
                payload = notify.run_escalated(event, self._settings.console_url)
                notify.enqueue(conn, derive_id(event.event_id, "notify"), payload, now)

    def _decided(self, event: decide.HumanDecision | ApprovalExpired) -> Sequence[Event]:
        if not self._key.verify(event):
            raise ForgedEvent(
                f"{type(event).__name__} {event.event_id} is not signed by the approvals service: "
                "decisions are taken only through its authenticated API"
            )
        with self._engine.begin() as conn:
            done = approvals.inbox.outputs_of(conn, event.event_id)
            if done is not None:
                return done
            now = self._clock.now()
            pending = approvals.pending_of(conn, event.approval_id)
            if isinstance(event, ApprovalExpired):
                verdict = decide.on_expired(event, pending, now)
            else:
                verdict = decide.on_decision(event, pending, now, self._users.current().same_person)
                self._record(conn, event, verdict, now)
            if verdict.status:
                note = (
                    event.reason if isinstance(event, ApprovalRejected) else getattr(event, "comment", None)
                )
                by = ",".join(verdict.decided_by)
                approvals.settle(conn, event.approval_id, status=verdict.status, by=by, note=note, at=now)
                if pending is not None:
                    _waited(pending.request, verdict.status, by, now)
            # What a person's decision yields carries authority: an approval to execute, or an
            # amended proposal for policy to decide.
            outputs = [
                self._signer.sign(o) if isinstance(o, ActionApproved | ActionProposed) else o
                for o in verdict.outputs
            ]
            approvals.inbox.record(conn, event, outputs, now)
        return outputs

    def _record(
        self, conn: Connection, decision: decide.HumanDecision, verdict: decide.Verdict, now: datetime
    ) -> None:
        refused = verdict.refused
        attempted = decide.attempted(decision)
        approvals.record_decision(
            conn,
            decision_event_id=decision.event_id,
            approval_id=decision.approval_id,
            approver=decision.approver,
            attempted=attempted,
            roles=decision.approver_roles,
            outcome="refused" if refused else "counted",
            code=refused.code if refused else None,
            reason=refused.reason if refused else None,
            at=now,
        )
        self._metrics.decision(
            attempted, "refused" if refused else "counted", refused.code if refused else None
        )


def _waited(request: ApprovalRequested, status: str, by: str, now: datetime) -> None:
    """The approval wait, as a span from request to decision in the run's trace, and as a figure."""
    requested = request.envelope.occurred_at
    waited = max(0.0, (now - requested).total_seconds())
    metrics.approval_wait.labels(status).observe(waited)
    if status != "expired":
        metrics.human_interventions.labels("approval").inc()
    span = _TRACER.start_span(
        "approval wait",
        start_time=int(requested.timestamp() * 1e9),
        attributes={
            "charter.approval_id": request.approval_id,
            "charter.tool": request.action.tool,
            "charter.approval.outcome": status,
            "charter.approval.decided_by": by,
        },
    )
    span.end(end_time=int(now.timestamp() * 1e9))


class Expiry:
    """Sends an ApprovalExpired for each approval past its deadline; the consumer applies it
    like any decision, so an expiry and a late approval are ordered, never both taken."""

    def __init__(self, engine: Engine, bus: Bus, signer: signing.Signer, clock: Clock) -> None:
        self._engine = engine
        self._bus = bus
        self._signer = signer
        self._clock = clock
        self._sent: dict[str, datetime] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sweep()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=SWEEP_S)

    async def sweep(self) -> int:
        now = self._clock.now()
        with self._engine.connect() as conn:
            due = approvals.due(conn, now)
            requests = {a: approvals.request_of(conn, a) for a, _, _ in due}
            traces = {a: approvals.trace_of(conn, a) for a, _, _ in due}
        sent = 0
        for approval_id, _, requested_at in due:
            request = requests[approval_id]
            last = self._sent.get(approval_id)
            if request is None or (last is not None and (now - last).total_seconds() < RESEND_S):
                continue
            expired = ApprovalExpired.caused_by(
                request,
                lineage=request,
                event_id=derive_id(approval_id, "expired"),
                now=now,
                approval_id=approval_id,
                requested_at=requested_at,
            )
            with telemetry.continued(traces[approval_id]):
                await self._bus.publish(self._signer.sign(expired))
            self._sent[approval_id] = now
            sent += 1
        return sent


async def _ensure_audit_tables(engine: Engine) -> None:
    """The API reads the audit store, which the audit service creates; starting together, make
    sure the tables are there (creating them races with the audit service's own, so retry)."""
    for attempt in range(5):
        try:
            audit_store.create(engine)
            return
        except DBAPIError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.2)


def figures(engine: Engine) -> dict[str, dict[str, int]]:
    with engine.connect() as conn:
        return {"approvals": approvals.counts(conn), "notifications": notify.counts(conn)}


async def build(settings: Settings, bus: Bus) -> Parts:
    engine = store.make_engine(settings.database_url_for(NAME))
    approvals.create(engine)
    tokens.create(engine)
    audit_engine = store.make_engine(settings.database_url_for("audit"))
    await _ensure_audit_tables(audit_engine)
    clock = SystemClock()
    users = WatchedDirectory(settings.users_file)
    api_metrics = Metrics()
    api_metrics.watch(lambda: figures(engine))
    notifier = notify.Notifier(settings, engine, clock)
    signer = signing.Signer.load(settings.keys, NAME)
    handler = Approvals(
        settings, engine, clock=clock, users=users, notifier=notifier, metrics=api_metrics, signer=signer
    )
    # Of the run events, only a run's end concerns approvals: the rest are skipped undecoded.
    runs_topic = topics.name(settings, Topic.RUNS)
    kept = {cls.__name__ for cls in RUN_TERMINAL} | {None}  # None: no known header, so bad input
    pipeline = Pipeline(
        NAME,
        bus,
        handler.handle,
        clock,
        skip=lambda d: d.topic == runs_topic and serde.event_type(d.value) not in kept,
    )
    auth = Authenticator(engine, users, OidcVerifier.from_settings(settings), clock, settings.tenant)
    audit_key = signing.Verifier.load(settings.keys, "audit")
    ctx = ApiContext(settings, engine, audit_engine, bus, signer, clock, users, auth, api_metrics, audit_key)
    server = HttpServer(create_app(ctx), settings.api_host, settings.api_port, "API and console")
    expiry = Expiry(engine, bus, signer, clock)

    def close() -> None:
        engine.dispose()
        audit_engine.dispose()

    return Parts(
        topics=[
            topics.name(settings, Topic.APPROVALS_REQUESTED),
            topics.name(settings, Topic.APPROVALS_DECIDED),
            topics.name(settings, Topic.RUNS),
        ],
        handle_batch=pipeline.prepare_batch,
        background=[server.run, expiry.run, notifier.run],
        control=ControlFollower(
            settings, NAME, bus=bus, engine=engine, store=SwitchStore(engine, approvals.switches)
        ),
        gates={"api": server.listening},
        sink=True,
        close=close,
        registries=[api_metrics.registry],
    )
