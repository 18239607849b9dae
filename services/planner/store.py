"""Run state, in Charter's own SQL store rather than a faust table.

Faust tables recover from their changelog topic, and on Tansu that recovery loses updates
(its end offsets are wrong, see BROKER.md). SQL recovers the same on every broker, and the
state is written in the same transaction as the inbox record of the event that changed it.

A waiting run also has a row in `planner_waits` (what it awaits, until when), kept with its
state, so the timer and arriving events find it by index. Business events some agent waits
for are kept in `planner_signals`, so one that comes before its run starts waiting still counts.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from charter import serde
from charter.agents import Agent
from charter.events import TriggerReceived, canonical_json
from charter.killswitch import switches_table
from charter.store import Inbox, Traces, inbox_table, upsert
from services.planner.run import LIVE, Chat, Done, Ending, RunState

metadata = MetaData()
runs = Table(
    "planner_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("agent_id", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
waits = Table(
    "planner_waits",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("event_name", String(200), nullable=False),
    Column("field", String(200), nullable=False),
    Column("key", String(500), nullable=False),
    Column("step", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("until", DateTime(timezone=True), nullable=False),
    Column("fired", Boolean, nullable=False, default=False),
    Index("planner_waits_by_event", "event_name"),
    Index("planner_waits_by_time", "fired", "until"),
)
signals = Table(
    "planner_signals",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, index=True),
    Column("data", Text, nullable=False),
    Column("event", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
inbox = Inbox(inbox_table(metadata, "planner"))
switches = switches_table(metadata, "planner")
# The trace each run began in: every later event of the run is handled in it.
traces = Traces(metadata, "planner_traces", "run_id")


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def _dump(state: RunState) -> str:
    return json.dumps(
        {
            "agent": state.agent.model_dump(mode="json"),
            "trigger": serde.encode(state.trigger).hex(),
            "results": state.results,
            "done": [asdict(d) for d in state.done],
            "undo": list(state.undo),
            "undone": list(state.undone),
            "ending": asdict(state.ending) if state.ending else None,
            "chat": asdict(state.chat) if state.chat else None,
            "attempt": state.attempt,
            "escalated_from": state.escalated_from,
            "depth": state.depth,
            "wait_key": state.wait_key,
            "wait_until": state.wait_until.isoformat() if state.wait_until else None,
        }
    )


# The statements every event runs, built once: SQLAlchemy spends more building and hashing a
# statement than SQLite spends running it (see charter.store._upsert).
_GET = select(runs).where(runs.c.run_id == bindparam("run_id"))
_EXISTING = select(runs.c.run_id).where(runs.c.run_id.in_(bindparam("run_ids", expanding=True)))
_SNAPSHOT = select(runs.c.run_id, runs.c.status, runs.c.step_index, runs.c.state).where(
    runs.c.run_id.in_(bindparam("run_ids", expanding=True))
)
_UNWAIT = delete(waits).where(waits.c.run_id == bindparam("run_id"))
_WAITING_FOR = select(waits.c.run_id, waits.c.field, waits.c.key).where(
    waits.c.event_name == bindparam("name")
)


def get(conn: Connection, run_id: str) -> RunState | None:
    row = conn.execute(_GET, {"run_id": run_id}).mappings().first()
    if row is None:
        return None
    body = json.loads(row["state"])
    trigger = serde.decode(bytes.fromhex(body["trigger"]), remember=True)
    if not isinstance(trigger, TriggerReceived):
        raise TypeError(f"run {run_id} holds a {type(trigger).__name__} as its trigger")
    return RunState(
        run_id=row["run_id"],
        agent=Agent.model_validate(body["agent"]),
        trigger=trigger,
        status=row["status"],
        step_index=row["step_index"],
        results=body["results"],
        # Rows written before compensation existed have none of these.
        done=tuple(Done(**d) for d in body.get("done", [])),
        undo=tuple(body.get("undo", [])),
        undone=tuple(body.get("undone", [])),
        ending=Ending(**body["ending"]) if body.get("ending") else None,
        chat=_chat(body["chat"]) if body.get("chat") else None,
        attempt=body.get("attempt", 0),
        escalated_from=body.get("escalated_from"),
        depth=body.get("depth", 0),
        wait_key=body.get("wait_key"),
        wait_until=datetime.fromisoformat(body["wait_until"]) if body.get("wait_until") else None,
    )


def _chat(body: dict[str, Any]) -> Chat:
    lists = {k: tuple(body[k]) for k in ("messages", "queued")}
    return Chat(**{**body, **lists})


def running(conn: Connection, agent: str | None = None) -> list[RunState]:
    query = select(runs.c.run_id).where(runs.c.status.in_(LIVE))
    if agent is not None:
        query = query.where(runs.c.agent_id == agent)
    found = [get(conn, run_id) for run_id in conn.execute(query).scalars()]
    return [state for state in found if state is not None]


def snapshot(conn: Connection, run_ids: Collection[str]) -> dict[str, tuple[str, int, str] | None]:
    """Each run's stored status, step and state as they stand (None if it has none yet), to
    tell if it changed."""
    found = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(_SNAPSHOT, {"run_ids": list(run_ids)})}
    return {run_id: found.get(run_id) for run_id in run_ids}


def existing(conn: Connection, run_ids: Collection[str]) -> set[str]:
    if not run_ids:
        return set()
    return set(conn.execute(_EXISTING, {"run_ids": list(run_ids)}).scalars())


def put(conn: Connection, state: RunState, now: datetime) -> None:
    values = {
        "run_id": state.run_id,
        "agent_id": state.agent.id,
        "status": state.status,
        "step_index": state.step_index,
        "state": _dump(state),
        "updated_at": now,
    }
    upsert(conn, runs, values, "run_id")
    _put_wait(conn, state)


def _put_wait(conn: Connection, state: RunState) -> None:
    if not any(step.wait is not None for step in state.agent.steps):
        return  # a run whose plan never waits has no wait to replace
    conn.execute(_UNWAIT, {"run_id": state.run_id})
    if state.status != "waiting" or state.wait_until is None:
        return
    wait = state.agent.steps[state.step_index].wait
    assert wait is not None
    conn.execute(
        insert(waits).values(
            run_id=state.run_id,
            event_name=wait.event,
            field=wait.field,
            key=state.wait_key or "",
            step=state.step_index,
            attempt=state.attempt,
            until=state.wait_until,
            fired=False,
        )
    )


def awaited_events(engine: Engine) -> set[str]:
    """The business events the stored waits name."""
    with engine.connect() as conn:
        return set(conn.execute(select(waits.c.event_name).distinct()).scalars())


def waiting_for(conn: Connection, name: str, data: dict[str, Any]) -> list[str]:
    """The runs waiting for this business event: its name, and their key in their field."""
    rows = conn.execute(_WAITING_FOR, {"name": name})
    return [run_id for run_id, field, key in rows if field in data and str(data[field]) == key]


def due(conn: Connection, now: datetime, limit: int = 500) -> list[tuple[str, int, int, str, str]]:
    """Waits past their time the timer has not yet reported: run, step, attempt, event, key."""
    query = (
        select(waits.c.run_id, waits.c.step, waits.c.attempt, waits.c.event_name, waits.c.key)
        .where(waits.c.fired.is_(False), waits.c.until <= now)
        .order_by(waits.c.until)
        .limit(limit)
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(query)]


def fired(conn: Connection, run_id: str, step: int, attempt: int) -> None:
    """The timer reported this wait (and no later one of the same run)."""
    done = update(waits).where(waits.c.run_id == run_id, waits.c.step == step, waits.c.attempt == attempt)
    conn.execute(done.values(fired=True))


def keep_signal(conn: Connection, trigger: TriggerReceived, now: datetime) -> None:
    """Keep a business event some agent waits for, unless it is kept already (a redelivery)."""
    if conn.execute(select(signals.c.event_id).where(signals.c.event_id == trigger.event_id)).first():
        return
    row = {"event_id": trigger.event_id, "name": trigger.name, "data": canonical_json(trigger.data)}
    conn.execute(insert(signals).values(**row, event=serde.encode(trigger).hex(), received_at=now))


def signal_for(conn: Connection, name: str, field: str, key: str) -> TriggerReceived | None:
    """The latest kept event of this name whose `field` is `key`."""
    query = select(signals.c.data, signals.c.event).where(signals.c.name == name)
    for data, event in conn.execute(query.order_by(signals.c.received_at.desc()).limit(10_000)):
        loaded: dict[str, Any] = json.loads(data)
        if field in loaded and str(loaded[field]) == key:
            found = serde.decode(bytes.fromhex(event))
            return found if isinstance(found, TriggerReceived) else None
    return None


IN_FLIGHT = ("running", "waiting", "cancelling", "compensating")


def in_flight(engine: Engine) -> int:
    """Runs started and not ended, nor parked with a human (escalated)."""
    with engine.connect() as conn:
        query = select(func.count()).select_from(runs).where(runs.c.status.in_(IN_FLIGHT))
        return int(conn.execute(query).scalar_one())
