"""One line of plain language per event, for people reading `tail`, `replay`, `run show` and the demo."""

from __future__ import annotations

from typing import Any

from charter import events as ev
from charter.errors import ForgedEvent
from charter.events import canonical_json


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _why(decision: ev.Decision) -> str:
    return "; ".join(decision.reasons) or "no reason given"


# How every refused or dead-lettered decision is told, first, so a reader (or the console) can
# tell a refused attempt from something that happened.
REFUSED_ATTEMPT = "refused attempt: "
HumanDecision = ev.ApprovalGranted | ev.ApprovalRejected | ev.ApprovalAmended
# What a person tried, by ApprovalRefused.attempted, as a noun: "dana's approval of ...".
_NOUN_OF = {"approve": "approval", "reject": "rejection", "amend": "amendment"}


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _noun(decision: HumanDecision) -> str:
    match decision:
        case ev.ApprovalGranted():
            return "approval"
        case ev.ApprovalRejected():
            return "rejection"
    return "amendment"


def submitted(decision: HumanDecision) -> str:
    """A decision as sent, before the approvals service has applied or refused it."""
    said = ""
    if isinstance(decision, ev.ApprovalRejected):
        said = f": {decision.reason or '-'}"
    elif isinstance(decision, ev.ApprovalAmended):
        said = f": {_short(decision.parameters)}"
    return f"{decision.approver}'s {_noun(decision)} of approval {decision.approval_id[:8]} submitted{said}"


def accepted(decision: HumanDecision) -> str:
    """A decision the approvals service applied: only then does it read as taken."""
    match decision:
        case ev.ApprovalGranted():
            return f"approval {decision.approval_id[:8]} granted by {decision.approver}"
        case ev.ApprovalRejected():
            why = decision.reason or "-"
            return f"approval {decision.approval_id[:8]} rejected by {decision.approver}: {why}"
    return (
        f"approval {decision.approval_id[:8]} amended by {decision.approver}: "
        f"{_short(decision.parameters)} goes back to policy"
    )


def dead_lettered(decision: HumanDecision, letter: ev.DeadLettered) -> str:
    """A decision the approvals service dead-lettered: forged (unsigned), or one it could not
    take at all. Its approver is only what the event claims, so it is named as a claim."""
    why = "forged" if letter.error_type == ForgedEvent.__name__ else f"dead-lettered by {letter.service}"
    return (
        f"{REFUSED_ATTEMPT}{_a(_noun(decision))} of approval {decision.approval_id[:8]} "
        f"claiming to be by {decision.approver} — {why}: {letter.reason}"
    )


def describe(event: ev.Event) -> str:  # noqa: C901, PLR0912 - one branch per event type is the point
    match event:
        case ev.TriggerReceived():
            # Only the API's signature proves who submitted it; anything else is a claim.
            by = event.submitted_by
            who = "" if by is None else f" submitted by {by}" if event.signature else f" claimed by {by}"
            return f"{event.name} from {event.source}{who} {_short(event.data)}"
        case ev.RunStarted():
            by = (
                f", submitted by {event.triggered_by}"
                if event.triggered_by
                else f", submitter {event.submitter_claimed} (claimed)"
                if event.submitter_claimed
                else ""
            )
            return f"run of {event.envelope.agent} started by {event.trigger_name} ({event.steps} steps){by}"
        case ev.RunCompleted():
            answer = event.outputs.get("answer")
            said = f": {_short(answer)}" if isinstance(answer, str) and answer else ""
            return f"run completed after {event.steps_completed} steps{said}"
        case ev.RunFailed():
            return f"run failed ({event.cause}): {event.reason}"
        case ev.RunCancelled():
            return f"run cancelled ({event.cause}): {event.reason}"
        case ev.RunEscalated():
            return f"run escalated to a human ({event.cause}): {event.reason}"
        case ev.RunHandedOff():
            task = f": {_short(event.task)}" if event.task else ""
            return f"handed off to {event.to_agent} (depth {event.depth}){task}"
        case ev.RunWaiting():
            return f"waits up to {event.timeout_s:g}s for {event.event_name} with key {event.key}"
        case ev.WaitExpired():
            return f"no {event.event_name} with key {event.key} came in time"
        case ev.RunInstructed():
            said = f": {_short(event.instruction)}" if event.instruction else ""
            return f"{event.command} by {event.instructed_by}{said}"
        case ev.ActionProposed():
            a = event.action
            model = f" (model: {event.llm_tokens} tokens)" if event.llm_tokens else ""
            return (
                f"step {a.step_index + 1} {a.step_id}: {a.tool} on {a.resource} {_short(a.parameters)}{model}"
            )
        case ev.ActionApproved():
            who = "policy" if event.approved_by == "policy" else f"{event.approved_by} (human)"
            again = ", revalidated by policy" if event.revalidated else ""
            return f"{event.action.tool} approved by {who}{again}: {_why(event.decision)}"
        case ev.ActionRejected():
            return f"{event.action.tool} rejected by {event.rejected_by}: {_why(event.decision)}"
        case ev.ApprovalRequested():
            roles = " or ".join(event.decision.approval_roles)
            n = event.decision.approvals_required
            who = f"{n} people in {roles}" if n > 1 else roles
            return f"{event.action.tool} waits for approval by {who} [approval {event.approval_id[:8]}]"
        case ev.ApprovalGranted() | ev.ApprovalRejected() | ev.ApprovalAmended():
            # Alone, a decision is only what someone sent: the approvals service may still
            # refuse it, or dead-letter it as forged. What it counted for is the run's to say
            # (services/audit/views.py pairs it with its outcome).
            return submitted(event)
        case ev.ApprovalExpired():
            return f"approval {event.approval_id[:8]} expired without a decision"
        case ev.ApprovalRefused():
            noun = _NOUN_OF.get(event.attempted, event.attempted)
            who = f"{event.approver}'s {noun}" if event.approver else _a(noun)
            return f"{REFUSED_ATTEMPT}{who} of approval {event.approval_id[:8]} — {event.reason}"
        case ev.ActionExecuted():
            return f"{event.action.tool} executed in {event.duration_ms:.1f} ms: {_short(event.result)}"
        case ev.ActionFailed():
            doubt = " (in doubt)" if event.in_doubt else ""
            return f"{event.action.tool} failed{doubt}: {event.error}"
        case ev.ToolUnavailable():
            return f"{event.action.tool} unavailable, not called: {event.reason}"
        case ev.CheckpointSigned():
            return f"audit head signed: {event.size} records, root {event.root[:16]}"
        case ev.DeadLettered():
            where = f"{event.source_topic}[{event.source_partition}]@{event.source_offset}"
            return f"dead letter from {where} by {event.service}: {event.reason}"
        case ev.KillSwitchSet():
            scope = " ".join(
                f"{k}={v}" for k, v in (("agent", event.scope_agent), ("tool", event.scope_tool)) if v
            )
            state = "ON" if event.active else "off"
            return f"kill switch {state} for {scope or 'everything'} by {event.set_by}: {event.reason}"
        case ev.KillSwitchAcknowledged():
            state = "on" if event.active else "off"
            return f"{event.service} ({event.instance}) applied kill switch {event.switch_id} ({state})"
        case ev.PolicyReloaded():
            state = "loaded" if event.valid else f"INVALID ({event.error})"
            return f"policy set {event.policy_hash[:12]} {state}: {len(event.policy_ids)} policies"
    return event.envelope.event_type
