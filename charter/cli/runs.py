"""charter runs | run show"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import typer

from charter import events as ev
from charter import serde
from charter.cli.output import console, table
from charter.cli.stores import open_store, resolve_id
from charter.clock import as_utc
from charter.config import Settings
from charter.describe import describe
from charter.errors import InvalidMessage
from services.audit import store as audit

run_app = typer.Typer(no_args_is_help=True, help="One run.")


@dataclass
class Summary:
    run_id: str
    agent: str = "-"
    trigger: str = "-"
    started: datetime | None = None
    status: str = "unknown"
    last: str = ""


def _status(event: ev.Event, current: str) -> str:
    if current in ("completed", "failed", "cancelled", "escalated"):
        return current
    match event:
        case ev.ApprovalRequested():
            return "awaiting approval"
        case ev.RunCompleted():
            return "completed"
        case ev.RunFailed():
            return "failed"
        case ev.RunCancelled():
            return "cancelled"
        case ev.RunEscalated():
            return "escalated"
        case ev.RunStarted() | ev.ActionProposed() | ev.ActionApproved() | ev.ActionExecuted():
            return "running"
    return current


def summarize(run_id: str, recorded: list[tuple[datetime | None, bytes]]) -> Summary:
    summary = Summary(run_id)
    for occurred_at, value in recorded:
        try:
            event = serde.decode(value)
        except InvalidMessage:
            continue
        if isinstance(event, ev.RunStarted):
            summary.agent = event.envelope.agent or "-"
            summary.trigger = event.trigger_name
            summary.started = occurred_at
        summary.status = _status(event, summary.status)
        summary.last = describe(event)
    return summary


def list_runs(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many of the latest runs.")] = 20,
) -> None:
    """The latest runs, from the audit store: agent, trigger, status, and the last thing that happened."""
    engine = open_store(Settings(), "audit")
    rows = []
    with engine.connect() as conn:
        for run_id in audit.run_ids(conn, limit=limit):
            recorded = sorted(audit.timeline(conn, run_id), key=_causal)
            s = summarize(run_id, [(r.occurred_at, r.value) for r in recorded])
            started = s.started.strftime("%Y-%m-%d %H:%M:%S") if s.started else "-"
            rows.append([run_id[:8], s.agent, s.trigger, started, s.status, s.last])
    if not rows:
        console.print("no runs yet")
        return
    table(["run", "agent", "trigger", "started (UTC)", "status", "last event"], rows)


def _causal(recorded: audit.Recorded) -> tuple[datetime, int]:
    """Order by when things happened; the audit sequence (arrival order) breaks ties."""
    at = as_utc(recorded.occurred_at) if recorded.occurred_at else datetime.max.replace(tzinfo=UTC)
    return at, recorded.seq


@run_app.command("show")
def show(run_id: Annotated[str, typer.Argument(help="The run's id, or its first characters.")]) -> None:
    """The run's timeline from the audit store: every event, in order, with its time."""
    engine = open_store(Settings(), "audit")
    with engine.connect() as conn:
        full = resolve_id(audit.run_ids(conn, prefix=run_id, limit=2), run_id, "run")
        rows = sorted(audit.timeline(conn, full), key=_causal)
    first = next((r.occurred_at for r in rows if r.occurred_at), None)
    s = summarize(full, [(r.occurred_at, r.value) for r in rows])
    console.print(f"run {full}  agent {s.agent}  trigger {s.trigger}  status {s.status}", markup=False)
    for r in rows:
        offset = (
            f"+{(r.occurred_at - first).total_seconds() * 1000:8.1f} ms"
            if r.occurred_at and first
            else " " * 12
        )
        try:
            text = describe(serde.decode(r.value))
        except InvalidMessage as exc:
            text = f"(undecodable: {exc})"
        console.print(f"  #{r.seq:<6} {offset}  {r.event_type:<18} {text}", markup=False)
