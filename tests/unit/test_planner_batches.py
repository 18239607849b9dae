"""The planner's batches: one transaction for a batch of records, the same outcome as a record
at a time, and a record that fails mid-batch costing neither the others' effects nor a double
effect. A recording sender stands in for the producer; tests/e2e runs the real broker."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from charter import serde, signing, store
from charter.clock import FixedClock, derive_id
from charter.config import Settings
from charter.events import (
    Action,
    ActionExecuted,
    ActionProposed,
    DeadLettered,
    Event,
    RunCompleted,
    RunInstructed,
    RunStarted,
    TriggerReceived,
)
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Pipeline
from services.planner import service
from services.planner import store as runs
from tests.factories import NOW
from tests.unit.test_pipeline import Recorder

AGENT = Path(__file__).resolve().parents[2] / "bench" / "agents" / "bench-lookup.yaml"


class Planned:
    """A planner on a SQLite store of its own, fed batches as its faust agent feeds them."""

    def __init__(self, home: Path) -> None:
        (home / "agents").mkdir()
        shutil.copy(AGENT, home / "agents")
        self.settings = Settings(home=home, agents_dir=home / "agents")
        signing.ensure_keys(self.settings.keys, ("planner", "approvals"))
        self.engine = store.make_engine(self.settings.database_url_for("planner"))
        runs.create(self.engine)
        model = service._model_client(self.settings)
        self.planner = service.Planner(self.settings, self.engine, FixedClock(NOW), model)
        self.recorder = Recorder()
        pipeline = Pipeline("planner", self.recorder, self.planner.handle, FixedClock(NOW))  # type: ignore[arg-type]
        self.pipeline = pipeline
        self.offset = 0

    def batch(self, *events: Event | bytes) -> list[Event]:
        """Handle one batch; what it sends."""
        deliveries = []
        for item in events:
            self.offset += 1
            value = item if isinstance(item, bytes) else serde.encode(item)
            deliveries.append(Delivery("charter.triggers", 0, self.offset, b"k", value, (), 0))
        self.recorder.sent = []

        async def go() -> None:
            await self.pipeline.publish(await self.planner.prepare_batch(self.pipeline, deliveries))

        asyncio.run(go())
        return list(self.recorder.sent)

    def count(self, table: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _trigger(n: int) -> TriggerReceived:
    event_id = derive_id("batch-test", str(n))
    return TriggerReceived.create(
        event_id=event_id,
        now=NOW,
        tenant="default",
        correlation_id=event_id,
        name="bench.lookup",
        data={"order_id": f"A-{1000 + n}"},
        source="test",
    )


def _executed(proposed: ActionProposed) -> ActionExecuted:
    return ActionExecuted.caused_by(
        proposed,
        event_id=derive_id(proposed.event_id, "executed"),
        now=NOW,
        action=proposed.action,
        idempotency_key=f"{proposed.run_id}:{proposed.action.step_index}",
        result={"status": "shipped"},
        duration_ms=1.0,
        attempts=1,
    )


def _stray_outcome() -> ActionExecuted:
    """An outcome for a run the planner never started: bad input, dead-lettered."""
    action = Action(
        action_id="a",
        step_index=0,
        step_id="look",
        tool="lookup_order",
        resource="order/A-1",
        parameters={},
        environment="production",
    )
    return ActionExecuted.create(
        event_id="stray",
        now=NOW,
        tenant="default",
        agent="bench-lookup",
        run_id="no-such-run",
        correlation_id="c",
        action=action,
        idempotency_key="no-such-run:0",
        result={},
        duration_ms=1.0,
        attempts=1,
    )


def test_a_batch_starts_and_ends_its_runs_as_records_one_at_a_time_would(tmp_path: Path) -> None:
    planned = Planned(tmp_path)
    triggers = [_trigger(n) for n in range(5)]
    sent = planned.batch(*triggers)
    started = [e for e in sent if isinstance(e, RunStarted)]
    proposed = [e for e in sent if isinstance(e, ActionProposed)]
    assert len(started) == len(proposed) == 5
    assert planned.count(runs.inbox.table) == 5

    # Each proposal's outcome, and a trigger seen twice in the same batch: it starts no second run.
    sent = planned.batch(*[_executed(p) for p in proposed], triggers[0], triggers[0])
    assert sum(isinstance(e, RunCompleted) for e in sent) == 5
    assert [e for e in sent if isinstance(e, RunStarted)] == [started[0], started[0]]  # recorded outputs
    assert planned.count(runs.runs) == 5

    # The whole batch redelivered: the same outputs, byte for byte, and no new effect.
    again = planned.batch(*[_executed(p) for p in proposed])
    assert [serde.encode(e) for e in again] == [
        serde.encode(e) for e in sent if not isinstance(e, RunStarted | ActionProposed)
    ]
    assert planned.count(runs.inbox.table) == 10


def test_a_record_failing_mid_batch_is_dead_lettered_and_the_rest_take_effect_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    planned = Planned(tmp_path)
    with caplog.at_level(logging.WARNING):
        sent = planned.batch(_trigger(1), _stray_outcome(), b"\xc3\x01not avro", _trigger(2))
    # The stray outcome failed inside the batch's transaction, which was then handled again.
    assert "handling a batch again a record at a time" in caplog.text
    letters = [e for e in sent if isinstance(e, DeadLettered)]
    assert {letter.error_type for letter in letters} == {"InvalidEvent", "UnknownSchema"}
    assert "unknown run no-such-run" in next(e.reason for e in letters if e.error_type == "InvalidEvent")
    started = [e for e in sent if isinstance(e, RunStarted)]
    assert sorted(e.run_id or "" for e in started) == sorted(
        derive_id(_trigger(n).event_id, "run:bench-lookup") for n in (1, 2)
    )
    # Each trigger's run once, each recorded once; the stray outcome not at all.
    assert planned.count(runs.runs) == 2
    assert planned.count(runs.inbox.table) == 2


def _cancel_then_outcome(home: Path, *, fail_once: bool) -> list[str]:
    """A run's cancel and its step's outcome in one batch, the outcome failing once if asked."""
    home.mkdir()
    planned = Planned(home)
    [proposed] = [e for e in planned.batch(_trigger(1)) if isinstance(e, ActionProposed)]
    # As the API sends it: signed by the approvals service.
    cancel = signing.Signer.load(planned.settings.keys, "approvals").sign(
        RunInstructed.caused_by(
            proposed,
            event_id=derive_id(proposed.event_id, "cancel"),
            now=NOW,
            command="cancel",
            instructed_by="ops",
        )
    )
    decide = planned.planner._decide
    failures = [RuntimeError("database is locked")] if fail_once else []

    def flaky(conn: Any, event: Event, now: Any) -> Any:
        if isinstance(event, ActionExecuted) and failures:
            raise failures.pop()
        return decide(conn, event, now)

    planned.planner._decide = flaky  # type: ignore[method-assign]
    return [type(e).__name__ for e in planned.batch(cancel, _executed(proposed))]


def test_a_batch_that_fails_part_way_takes_effect_in_its_order(tmp_path: Path) -> None:
    """The cancel's effect is rolled back with the batch; the outcome must not then be decided
    (on a retry) before the cancel is decided again."""
    steady = _cancel_then_outcome(tmp_path / "steady", fail_once=False)
    assert "RunCancelled" in steady
    assert _cancel_then_outcome(tmp_path / "failing", fail_once=True) == steady
