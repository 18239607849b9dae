"""Run state, in Charter's own SQL store rather than a faust table.

Faust tables recover from their changelog topic, and on Tansu that recovery loses updates
(its end offsets are wrong, see BROKER.md). SQL recovers the same on every broker, and the
state is written in the same transaction as the inbox record of the event that changed it.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, DateTime, Engine, Integer, MetaData, String, Table, Text, select

from charter import serde
from charter.agents import Agent
from charter.events import TriggerReceived
from charter.killswitch import switches_table
from charter.store import Inbox, inbox_table, upsert
from services.planner.run import Chat, Done, Ending, RunState

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
inbox = Inbox(inbox_table(metadata, "planner"))
switches = switches_table(metadata, "planner")


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
        }
    )


def get(conn: Connection, run_id: str) -> RunState | None:
    row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
    if row is None:
        return None
    body = json.loads(row["state"])
    trigger = serde.decode(bytes.fromhex(body["trigger"]))
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
    )


def _chat(body: dict[str, Any]) -> Chat:
    lists = {k: tuple(body[k]) for k in ("messages", "queued")}
    return Chat(**{**body, **lists})


def running(conn: Connection, agent: str | None = None) -> list[RunState]:
    query = select(runs.c.run_id).where(runs.c.status == "running")
    if agent is not None:
        query = query.where(runs.c.agent_id == agent)
    found = [get(conn, run_id) for run_id in conn.execute(query).scalars()]
    return [state for state in found if state is not None]


def snapshot(conn: Connection, run_ids: Collection[str]) -> dict[str, str | None]:
    """Each run's stored state as it stands (None if it has none yet), to tell if it changed."""
    found = dict(
        conn.execute(select(runs.c.run_id, runs.c.state).where(runs.c.run_id.in_(list(run_ids)))).all()
    )
    return {run_id: found.get(run_id) for run_id in run_ids}


def existing(conn: Connection, run_ids: Collection[str]) -> set[str]:
    if not run_ids:
        return set()
    return set(conn.execute(select(runs.c.run_id).where(runs.c.run_id.in_(list(run_ids)))).scalars())


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
