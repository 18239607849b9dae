"""What people read from the audit log: runs with their status, a run's timeline, what each agent
did with its tools, and exports. Shared by the CLI, the HTTP API and the console, so all three
tell the same story."""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from charter import events as ev
from charter import serde
from charter.clock import as_utc
from charter.describe import HumanDecision, accepted, dead_lettered, describe
from charter.errors import InvalidMessage
from services.audit import store
from services.audit.store import Recorded, log_table

TERMINAL = ("completed", "failed", "cancelled", "escalated")
# What happened to an action once decided: the executor called its tool (and it returned or
# failed), or it was denied (by policy, by a human rejecting its approval, or by a kill switch).
CALLED = (ev.ActionExecuted.__name__, ev.ActionFailed.__name__)
DENIED = ev.ActionRejected.__name__


@dataclass
class Summary:
    run_id: str
    tenant: str | None = None
    agent: str = "-"
    trigger: str = "-"
    started: datetime | None = None
    status: str = "unknown"
    last: str = ""
    triggered_by: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Entry:
    seq: int
    occurred_at: datetime | None
    event_type: str
    topic: str
    text: str
    event: ev.Event | None


def _after_escalation(event: ev.Event) -> str | None:
    """A human resumes an escalated run, or cancels it; nothing else changes its status."""
    if isinstance(event, ev.RunInstructed) and event.command == "resume":
        return "running"
    return "cancelled" if isinstance(event, ev.RunCancelled) else None


def _status(event: ev.Event, current: str) -> str:
    if current == "escalated":
        return _after_escalation(event) or current
    if current in TERMINAL:
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
        case ev.RunWaiting():
            return "waiting"
        case ev.RunStarted() | ev.ActionProposed() | ev.ActionApproved() | ev.ActionExecuted():
            return "running"
    return current


def causal(recorded: Recorded) -> tuple[datetime, int]:
    """Order by when things happened; the audit sequence (arrival order) breaks ties."""
    at = as_utc(recorded.occurred_at) if recorded.occurred_at else datetime.max.replace(tzinfo=UTC)
    return at, recorded.seq


def summarize(run_id: str, entries: list[Entry]) -> Summary:
    summary = Summary(run_id)
    for entry in entries:
        event = entry.event
        if event is None:
            continue
        if isinstance(event, ev.RunStarted):
            summary.tenant = event.envelope.tenant
            summary.agent = event.envelope.agent or "-"
            summary.trigger = event.trigger_name
            summary.started = entry.occurred_at
            claimed = f"{event.submitter_claimed} (claimed)" if event.submitter_claimed else None
            summary.triggered_by = event.triggered_by or claimed
        summary.status = _status(event, summary.status)
        summary.last = entry.text
    return summary


def timeline(conn: Connection, run_id: str) -> list[Entry]:
    out = []
    for r in sorted(store.timeline(conn, run_id), key=causal):
        try:
            event: ev.Event | None = serde.decode(r.value) if r.value is not None else None
            text = describe(event) if event else "(event bytes removed under retention)"
        except InvalidMessage as exc:
            event, text = None, f"(undecodable: {exc})"
        at = as_utc(r.occurred_at) if r.occurred_at else None
        out.append(Entry(r.seq, at, r.event_type, r.topic, text, event))
    return settled(out)


def _refused_decision(event: ev.Event | None) -> str | None:
    """The id of the person's decision this event refuses, if it refuses one: the approvals
    service's ApprovalRefused names it, and a dead letter is caused by the record it holds
    (only the approvals service consumes decisions, so a decision's letter is its refusal)."""
    if isinstance(event, ev.ApprovalRefused):
        return event.decision_event_id
    if isinstance(event, ev.DeadLettered):
        return event.envelope.causation_id
    return None


@dataclass
class _Applied:
    """What the approvals service made of the run's decisions, from what it published."""

    granted: set[tuple[str, str]]  # (approval id, approver) of every approval that counted
    caused: set[tuple[str, str]]  # (event type, causing decision's id) of rejections and amendments

    @classmethod
    def of(cls, entries: list[Entry]) -> _Applied:
        granted, caused = set(), set()
        for e in entries:
            match e.event:
                case ev.ActionApproved(approval_id=str(approval)):
                    granted |= {(approval, a.user) for a in e.event.approvers}
                case ev.ActionRejected() | ev.ActionProposed() if e.event.envelope.causation_id:
                    caused.add((type(e.event).__name__, e.event.envelope.causation_id))
        return cls(granted, caused)

    def accepts(self, decision: HumanDecision) -> bool:
        match decision:
            case ev.ApprovalGranted():
                return (decision.approval_id, decision.approver) in self.granted
            case ev.ApprovalRejected():
                return (ev.ActionRejected.__name__, decision.event_id) in self.caused
        return (ev.ActionProposed.__name__, decision.event_id) in self.caused


def settled(entries: list[Entry]) -> list[Entry]:
    """The timeline with each person's decision told as what it came to. A decision refused by
    the approvals service (ApprovalRefused) or dead-lettered (forged, say) becomes one refused
    attempt, at the refusal: that is when it was known, and a forger chooses its own event's
    time. One the service applied reads as taken ("granted by"); one with no outcome yet, or
    counted toward a quorum not yet reached, as submitted. Nothing refused reads as granted."""
    decisions = {
        e.event.event_id: e.event
        for e in entries
        if isinstance(e.event, ev.ApprovalGranted | ev.ApprovalRejected | ev.ApprovalAmended)
    }
    refused: set[str] = set()
    merged: dict[int, Entry] = {}
    for e in entries:
        decision = decisions.get(_refused_decision(e.event) or "")
        if decision is None or decision.event_id in refused:
            continue
        refused.add(decision.event_id)
        if isinstance(e.event, ev.DeadLettered):
            merged[e.seq] = replace(e, text=dead_lettered(decision, e.event))
    applied = _Applied.of(entries)
    out = []
    for e in entries:
        told = merged.get(e.seq, e)
        if isinstance(e.event, ev.ApprovalGranted | ev.ApprovalRejected | ev.ApprovalAmended):
            if e.event.event_id in refused:
                continue
            if applied.accepts(e.event):
                told = replace(e, text=accepted(e.event))
        out.append(told)
    return out


def trigger_of(conn: Connection, entries: list[Entry]) -> ev.TriggerReceived | None:
    """The business event that started a run (recorded under no run id of its own)."""
    started = next((e.event for e in entries if isinstance(e.event, ev.RunStarted)), None)
    if not isinstance(started, ev.RunStarted):
        return None
    value = conn.execute(
        select(log_table.c.value).where(log_table.c.event_id == started.trigger_event_id)
    ).scalar()
    if value is None:
        return None
    try:
        trigger = serde.decode(value)
    except InvalidMessage:
        return None
    return trigger if isinstance(trigger, ev.TriggerReceived) else None


def recent(
    conn: Connection, limit: int = 20, prefix: str = "", tenants: Collection[str] | None = None
) -> list[Summary]:
    """The most recently active runs, of `tenants` only if given."""
    return [
        summarize(run_id, timeline(conn, run_id))
        for run_id in store.run_ids(conn, prefix, limit, tenants=tenants)
    ]


def as_json(event: ev.Event) -> dict[str, Any]:
    return dict(event.model_dump(mode="json", context={"objects": True}))


def export(
    conn: Connection,
    *,
    run_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tenants: Collection[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Audit records in log order, each with its attribution and leaf hash, decoded where it decodes."""
    for row in store.selected(conn, run_id=run_id, since=since, until=until, tenants=tenants):
        try:
            event: dict[str, Any] | None = as_json(serde.decode(row.value)) if row.value else None
        except InvalidMessage:
            event = None
        yield {
            "seq": row.seq,
            "event_id": row.event_id,
            "event_type": row.event_type,
            "run_id": row.run_id,
            "agent": row.agent,
            "actor": row.actor,
            "tenant": row.tenant,
            "service": row.service,
            "host": row.host,
            "source": row.source,
            "outcome": row.outcome,
            "policy_hash": row.policy_hash,
            "trace_id": row.trace_id,
            "topic": row.topic,
            "partition": row.partition,
            "offset": row.offset,
            "occurred_at": as_utc(row.occurred_at).isoformat() if row.occurred_at else None,
            "recorded_at_us": row.recorded_at_us,
            "leaf_hash": bytes(row.leaf_hash).hex(),
            "value_b64": base64.b64encode(row.value).decode() if row.value is not None else None,
            "event": event,
        }


@dataclass
class ToolUse:
    """What one agent did with one tool over a window. A failed call counts as a use: the
    executor called the tool with the agent's grant, whatever the tool answered."""

    executed: int = 0
    failed: int = 0
    dry_runs: int = 0  # of those executed, in a dry-run environment
    denied: int = 0
    last_used: datetime | None = None

    @property
    def uses(self) -> int:
        return self.executed + self.failed

    def count(self, event_type: str, at: datetime, dry_run: bool) -> None:
        if event_type == DENIED:
            self.denied += 1
            return
        if event_type == ev.ActionFailed.__name__:
            self.failed += 1
        else:
            self.executed += 1
            self.dry_runs += dry_run
        self.last_used = at if self.last_used is None else max(self.last_used, at)


def _action_of(value: bytes | None) -> tuple[str | None, bool]:
    """The tool an action event names, and whether it ran dry; no tool if the bytes are gone."""
    if value is None:
        return None, False
    try:
        event = serde.decode(value)
    except InvalidMessage:
        return None, False
    action = getattr(event, "action", None)
    return (action.tool if isinstance(action, ev.Action) else None), getattr(event, "dry_run", False)


def tool_uses(conn: Connection, since: datetime) -> dict[str, dict[str | None, ToolUse]]:
    """Per agent and tool, the actions called and denied since `since`. The tool is read from
    each event (it is no column); a record whose bytes retention removed counts under tool None,
    so a caller can say some use is no longer attributable rather than call a tool unused."""
    query = select(
        log_table.c.agent, log_table.c.event_type, log_table.c.occurred_at, log_table.c.value
    ).where(
        log_table.c.event_type.in_([*CALLED, DENIED]),
        log_table.c.agent.is_not(None),
        log_table.c.occurred_at >= as_utc(since),
    )
    uses: dict[str, dict[str | None, ToolUse]] = defaultdict(lambda: defaultdict(ToolUse))
    for agent, event_type, at, value in conn.execute(query.execution_options(yield_per=1000)):
        tool, dry_run = _action_of(value)
        uses[agent][tool].count(event_type, as_utc(at), dry_run)
    return {agent: dict(tools) for agent, tools in uses.items()}
