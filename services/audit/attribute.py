"""Who, what, when, where, source, outcome, policy and trace of an event, as the audit records it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import String

from charter import events as ev
from charter.bus import ORIGIN_HEADER
from charter.errors import ForgedEvent
from charter.runtime.delivery import Delivery
from services.audit.record import Attribution
from services.audit.store import log_table

UNDECODABLE = "Undecodable"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")

_PLAIN: dict[type[ev.Event], str] = {
    ev.TriggerReceived: "received",
    ev.RunStarted: "started",
    ev.RunCompleted: "completed",
    ev.RunFailed: "failed",
    ev.RunCancelled: "cancelled",
    ev.RunEscalated: "escalated",
    ev.ActionProposed: "proposed",
    ev.ActionRejected: "denied",
    ev.ApprovalRequested: "approval requested",
    # A person's decision on approvals.decided is only submitted: the approvals service may
    # still refuse it (ApprovalRefused) or dead-letter it as forged. What it counted for is
    # recorded with what that service publishes (ActionApproved, ActionRejected, ActionProposed).
    ev.ApprovalGranted: "approval submitted",
    ev.ApprovalRejected: "rejection submitted",
    ev.ApprovalAmended: "amendment submitted",
    ev.ApprovalExpired: "expired",
    ev.ApprovalRefused: "refused",
    ev.ToolUnavailable: "tool unavailable",
    ev.DeadLettered: "dead-lettered",
    ev.KillSwitchAcknowledged: "acknowledged",
    ev.CheckpointSigned: "signed",
}


def outcome(event: ev.Event) -> str:
    match event:
        case ev.ActionApproved():
            return "allowed" if event.approved_by == "policy" else "approved, to be decided again"
        case ev.ActionExecuted():
            return "dry run" if event.dry_run else "succeeded"
        case ev.ActionFailed():
            return "in doubt" if event.in_doubt else "failed"
        case ev.KillSwitchSet():
            return "switched on" if event.active else "switched off"
        case ev.PolicyReloaded():
            return "loaded" if event.valid else "invalid"
        case ev.DeadLettered() if event.error_type == ForgedEvent.__name__:
            return "refused: forged"
    return _PLAIN.get(type(event), "recorded")


def actor(event: ev.Event) -> str | None:
    """The human behind the event, where there is one."""
    match event:
        case ev.TriggerReceived():
            return event.submitted_by
        case ev.RunStarted():
            return event.triggered_by
        case ev.ActionProposed():
            return event.amended_by or event.triggered_by
        case ev.ApprovalRequested():
            return event.amended_by or event.triggered_by
        case ev.ApprovalGranted() | ev.ApprovalRejected() | ev.ApprovalAmended():
            return event.approver_email or event.approver
        case ev.ApprovalRefused():
            return event.approver
        case ev.ActionApproved() if event.approvers:
            return ",".join(a.user for a in event.approvers)
        case ev.KillSwitchSet():
            return event.set_by
    return None


def policy_hash(event: ev.Event) -> str | None:
    decision = getattr(event, "decision", None)
    if isinstance(decision, ev.Decision):
        return decision.policy_hash
    if isinstance(event, ev.PolicyReloaded):
        return event.policy_hash
    return None


def source(event: ev.Event) -> str | None:
    """Where the event came from: a trigger's source system, else the event that caused it."""
    if isinstance(event, ev.TriggerReceived):
        return event.source
    if isinstance(event, ev.DeadLettered):
        return f"{event.source_topic}:{event.source_partition}:{event.source_offset}"
    cause = event.envelope.causation_id
    return f"event:{cause}" if cause else None


def trace_id(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The trace id of a W3C `traceparent` header (version-traceid-spanid-flags), read directly:
    the propagator's general path cost more than the rest of the attribution."""
    for key, value in headers:
        if key == "traceparent":
            parts = value.decode("latin-1").split("-")
            if len(parts) >= 4 and _TRACE_ID.fullmatch(parts[1]) and parts[1] != "0" * 32:
                return parts[1]
    return None


def origin(headers: Sequence[tuple[str, bytes]]) -> tuple[str | None, str | None]:
    """The producing service and host, from the header every Charter producer sets."""
    for key, value in headers:
        if key == ORIGIN_HEADER:
            service, _, host = value.decode("utf-8", "replace").partition("@")
            return service or None, host or None
    return None, None


# The widths of the log's text columns. Producers choose these values (ids, names, headers):
# one too long for PostgreSQL would fail its batch again at every redelivery and stop the audit,
# so each is fitted; the event's bytes keep the full value.
_WIDTHS = {c.name: c.type.length for c in log_table.columns if isinstance(c.type, String) and c.type.length}


def _fit(value: str, width: int) -> str:
    if len(value) <= width:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    return f"{value[: width - 25]}…sha256:{digest}"


def fitted(a: Attribution) -> Attribution:
    changes = {
        name: _fit(value, width)
        for name, width in _WIDTHS.items()
        if isinstance(value := getattr(a, name, None), str) and len(value) > width
    }
    return replace(a, **changes) if changes else a  # type: ignore[arg-type]


def attribute(
    delivery: Delivery, event: ev.Event | None, recorded_at_us: int, subject: str | None
) -> Attribution:
    return fitted(_attribute(delivery, event, recorded_at_us, subject))


def _attribute(
    delivery: Delivery, event: ev.Event | None, recorded_at_us: int, subject: str | None
) -> Attribution:
    service, host = origin(delivery.headers)
    where = dict(
        recorded_at_us=recorded_at_us,
        topic=delivery.topic,
        partition=delivery.partition,
        offset=delivery.offset,
        service=service,
        host=host,
        trace_id=trace_id(delivery.headers),
        subject=subject,
    )
    if event is None:
        position = f"{delivery.topic}:{delivery.partition}:{delivery.offset}"
        return Attribution(
            event_id=f"undecodable:{position}",
            event_type=UNDECODABLE,
            run_id=None,
            agent=None,
            actor=None,
            tenant=None,
            occurred_at=None,
            source=None,
            outcome="undecodable",
            policy_hash=None,
            **where,  # type: ignore[arg-type]
        )
    env = event.envelope
    return Attribution(
        event_id=env.event_id,
        event_type=env.event_type,
        run_id=env.run_id,
        agent=env.agent,
        actor=actor(event),
        tenant=env.tenant,
        occurred_at=env.occurred_at,
        source=source(event),
        outcome=outcome(event),
        policy_hash=policy_hash(event),
        **where,  # type: ignore[arg-type]
    )
