"""The executor's decisions: whether to call a tool for an approved action, whether to call it
again after a failure, and what its outcome event says.

Every action has an idempotency key, its run and step. The store records `started` before the
call and the outcome after it. A key already completed replays the recorded outcome and calls
nothing; a key started but never completed is in doubt: the tool may have acted. An
idempotent tool is then called again with the same key; any other is not, and the action fails
as in doubt, for a human to resolve with the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from charter.clock import derive_id
from charter.events import (
    ActionApproved,
    ActionExecuted,
    ActionFailed,
    ActionRejected,
    Event,
    ToolUnavailable,
)
from charter.killswitch import KillSwitch


@dataclass(frozen=True)
class Execution:
    """What the store knows about one idempotency key."""

    status: Literal["started", "completed"]
    attempts: int
    outcome: Event | None


@dataclass(frozen=True)
class Plan:
    kind: Literal["call", "replay", "in_doubt"]
    attempt: int
    recorded: Event | None = None


def idempotency_key(approved: ActionApproved) -> str:
    return f"{approved.envelope.run_id}:{approved.action.step_index}"


def plan(record: Execution | None, idempotent: bool) -> Plan:
    if record is None:
        return Plan("call", 1)
    if record.status == "completed":
        return Plan("replay", record.attempts, record.outcome)
    if idempotent:
        return Plan("call", record.attempts + 1)
    return Plan("in_doubt", record.attempts)


def executed(
    approved: ActionApproved,
    result: dict[str, Any],
    duration_ms: float,
    attempts: int,
    now: datetime,
    *,
    dry_run: bool = False,
) -> ActionExecuted:
    key = idempotency_key(approved)
    return ActionExecuted.caused_by(
        approved,
        event_id=derive_id(key, "outcome"),
        now=now,
        action=approved.action,
        idempotency_key=key,
        result=result,
        duration_ms=round(duration_ms, 3),
        attempts=attempts,
        dry_run=dry_run,
    )


def failed(
    approved: ActionApproved,
    error: str,
    error_type: str,
    attempts: int,
    now: datetime,
    *,
    in_doubt: bool = False,
) -> ActionFailed:
    key = idempotency_key(approved)
    return ActionFailed.caused_by(
        approved,
        event_id=derive_id(key, "outcome"),
        now=now,
        action=approved.action,
        idempotency_key=key,
        error=error,
        error_type=error_type,
        in_doubt=in_doubt,
        attempts=attempts,
    )


def unavailable(
    approved: ActionApproved, failures: int, retry_after_s: float, now: datetime
) -> ToolUnavailable:
    """The tool's circuit is open: not called, and the planner hears why."""
    return ToolUnavailable.caused_by(
        approved,
        event_id=derive_id(idempotency_key(approved), "outcome"),
        now=now,
        action=approved.action,
        idempotency_key=idempotency_key(approved),
        failures=failures,
        retry_after_s=retry_after_s,
        reason=(
            f"{approved.action.tool} failed {failures} times in a row; its circuit is open "
            f"for another {retry_after_s:.0f}s, so it was not called"
        ),
    )


def refused(approved: ActionApproved, reason: str, now: datetime) -> ActionRejected:
    """The approved action is not run: a kill switch covers it."""
    decision = approved.decision.model_copy(
        update={"outcome": "deny", "reasons": [reason], "limit": "kill_switch", "approval_roles": []}
    )
    return ActionRejected.caused_by(
        approved,
        event_id=derive_id(idempotency_key(approved), "outcome"),
        now=now,
        action=approved.action,
        decision=decision,
        rejected_by="kill-switch",
    )


IN_DOUBT = (
    "in doubt: a previous attempt started but recorded no outcome, and the tool is not idempotent, "
    "so it was not called again; check the target system before retrying by hand"
)
CALL_IN_DOUBT = (
    "in doubt: the tool may have acted ({error}); it is not idempotent, so it was not called again"
)
CALL_IN_DOUBT_IDEMPOTENT = (
    "in doubt: the tool may have acted ({error}) and gave no answer after its last attempt; "
    "it is idempotent, so calling it again with the same key is safe"
)


def uncalled(
    approved: ActionApproved, plan: Plan, now: datetime, *, switch: KillSwitch | None, tool_known: bool
) -> Event | None:
    """The outcome of an action whose tool must not be called, if it is one: a kill switch
    covers it, its tool is unknown, or an earlier attempt left it in doubt."""
    if switch is not None:
        if plan.kind == "call" and plan.attempt == 1:
            # Approved before the switch, still queued: refused, never started.
            return refused(approved, switch.describe(), now)
        # Started before the switch and never finished: it may have acted, and is not called again.
        return failed(approved, IN_DOUBT, "InDoubt", plan.attempt, now, in_doubt=True)
    if not tool_known:
        return failed(approved, f"unknown tool {approved.action.tool!r}", "UnknownTool", plan.attempt, now)
    if plan.kind == "in_doubt":
        return failed(approved, IN_DOUBT, "InDoubt", plan.attempt, now, in_doubt=True)
    return None


@dataclass(frozen=True)
class Failure:
    """A failed call as the executor saw it (charter's tool caller says which kind)."""

    error: str
    error_type: str
    retryable: bool
    in_doubt: bool
    unsent: bool


def call_again(failure: Failure, *, idempotent: bool, tries: int, max_attempts: int) -> bool:
    """Whether to call the tool again after `tries` calls: only an idempotent tool, or a call
    that certainly did not act, and only while attempts remain (the tool's circuit, which may
    refuse, is asked apart)."""
    return failure.retryable and (idempotent or failure.unsent) and tries < max_attempts


def gave_up(
    approved: ActionApproved, failure: Failure, attempts: int, now: datetime, *, idempotent: bool
) -> ActionFailed:
    """The outcome of a call that failed for good: in doubt if the tool may have acted."""
    if failure.in_doubt:
        doubt = CALL_IN_DOUBT_IDEMPOTENT if idempotent else CALL_IN_DOUBT
        message = doubt.format(error=failure.error)
        return failed(approved, message, failure.error_type, attempts, now, in_doubt=True)
    return failed(approved, failure.error, failure.error_type, attempts, now)
