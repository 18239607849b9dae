"""The approvals service's adapter: records requests, applies humans' decisions, once each."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine

from charter import store, topics
from charter.bus import Bus
from charter.clock import Clock, SystemClock
from charter.config import Settings
from charter.consumer import Delivery
from charter.describe import describe
from charter.events import RUN_TERMINAL, ApprovalGranted, ApprovalRejected, ApprovalRequested, Event
from charter.killswitch import ControlFollower, SwitchStore
from charter.pipeline import Pipeline
from charter.service import Parts
from charter.topics import Topic
from services.approvals import decide
from services.approvals import store as approvals

NAME = "approvals"


class Approvals:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def handle(self, event: Event, _delivery: Delivery) -> Sequence[Event]:
        if isinstance(event, ApprovalRequested):
            with self._engine.begin() as conn:
                approvals.add(conn, event)
            return []
        if isinstance(event, RUN_TERMINAL) and event.run_id:
            # A run that ended (cancelled by a kill switch, say) has nothing left to approve.
            why = f"run ended: {describe(event)}"
            with self._engine.begin() as conn:
                approvals.withdraw(conn, event.run_id, why, event.envelope.occurred_at)
            return []
        if not isinstance(event, ApprovalGranted | ApprovalRejected):
            return []
        with self._engine.begin() as conn:
            done = approvals.inbox.outputs_of(conn, event.event_id)
            if done is not None:
                return done
            now = self._clock.now()
            request, status = approvals.request_of(conn, event.approval_id)
            outputs = decide.on_decision(event, request, status, now)
            if outputs:
                granted = isinstance(event, ApprovalGranted)
                note = event.comment if isinstance(event, ApprovalGranted) else event.reason
                approvals.decide(
                    conn,
                    event.approval_id,
                    status="approved" if granted else "rejected",
                    by=event.approver,
                    note=note,
                    at=now,
                )
            approvals.inbox.record(conn, event, outputs, now)
        return outputs


async def build(settings: Settings, bus: Bus) -> Parts:
    engine = store.make_engine(settings.database_url_for(NAME))
    approvals.create(engine)
    clock = SystemClock()
    pipeline = Pipeline(NAME, bus, Approvals(engine, clock).handle, clock)
    return Parts(
        topics=[
            topics.name(settings, Topic.APPROVALS_REQUESTED),
            topics.name(settings, Topic.APPROVALS_DECIDED),
            topics.name(settings, Topic.RUNS),
        ],
        handle_batch=pipeline.process_batch,
        control=ControlFollower(
            settings, NAME, bus=bus, engine=engine, store=SwitchStore(engine, approvals.switches)
        ),
        close=engine.dispose,
    )
