"""A person's decision, from the API or the console, on its way to the approvals service.

The decision is built from the authenticated principal (never from a request field), signed
with the approvals service's key, published to `approvals.decided`, and then awaited: the
approvals service's consumer alone applies it, so a decision from the console, the CLI or
another replica's API is checked by the same rules, in the order they happened.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sqlalchemy import Connection

from charter import telemetry
from charter.clock import new_id
from charter.events import ApprovalAmended, ApprovalGranted, ApprovalRejected, ApprovalRequested
from charter.identity.principal import Principal
from services.approvals import store
from services.approvals.api import ApiContext, ApiError
from services.approvals.api_models import ApprovalOut, DecisionOut, DecisionResult
from services.approvals.decide import HumanDecision

WAIT_S = 15.0
POLL_S = 0.02
# A refusal's code and the HTTP status it answers with.
STATUS_OF = {
    "wrong_role": 403,
    "separation_of_duties": 403,
    "not_pending": 409,
    "expired": 409,
    "binding_mismatch": 409,
    "duplicate_approver": 409,
    "invalid_amendment": 422,
}


def approval_out(a: store.Approval) -> ApprovalOut:
    return ApprovalOut(
        approval_id=a.approval_id,
        run_id=a.run_id,
        tenant=a.tenant,
        agent=a.agent,
        tool=a.tool,
        resource=a.resource,
        parameters=json.loads(a.parameters),
        roles=[r for r in a.roles.split(",") if r],
        approvals_required=a.quorum,
        reasons=a.reasons,
        action_hash=a.action_hash,
        status=a.status,
        requested_at=a.requested_at,
        expires_at=a.expires_at,
        decided_at=a.decided_at,
        decided_by=a.decided_by,
        note=a.note,
    )


def decision_out(d: store.DecisionRecord) -> DecisionOut:
    return DecisionOut(
        decision_event_id=d.decision_event_id,
        approver=d.approver,
        attempted=d.attempted,
        roles=[r for r in d.roles.split(",") if r],
        outcome=d.outcome,
        code=d.code,
        reason=d.reason,
        at=d.at,
    )


def load(conn: Connection, approval_id: str, who: Principal) -> tuple[store.Approval, ApprovalRequested]:
    """The approval, if `who` acts for its tenant: another tenant's is not found, so that its
    id says nothing either."""
    approval = store.get(conn, approval_id)
    request = store.request_of(conn, approval_id) if approval else None
    if approval is None or request is None or not who.acts_for(approval.tenant):
        raise ApiError(404, "not_found", f"no approval {approval_id}")
    return approval, request


def build(
    who: Principal, request: ApprovalRequested, now: Any, kind: str, action_hash: str, **fields: Any
) -> HumanDecision:
    env = request.envelope
    common: dict[str, Any] = {
        "event_id": new_id(),
        "now": now,
        "tenant": env.tenant,
        "agent": env.agent,
        "run_id": env.run_id,
        "correlation_id": env.correlation_id,
        "causation_id": request.event_id,
        "approval_id": request.approval_id,
        "approver": who.user,
        "approver_email": who.email,
        "approver_roles": sorted(who.roles),
        "action_hash": action_hash,
    }
    if kind == "reject":
        return ApprovalRejected.create(**common, reason=fields.get("reason"))
    if fields.get("parameters") is not None:
        return ApprovalAmended.create(
            **common, parameters=fields["parameters"], comment=fields.get("comment")
        )
    return ApprovalGranted.create(**common, comment=fields.get("comment"))


async def submit(
    ctx: ApiContext, who: Principal, approval_id: str, kind: str, action_hash: str, **fields: Any
) -> tuple[int, DecisionResult]:
    """Send the decision and wait for its outcome: (HTTP status, result)."""
    with ctx.engine.connect() as conn:
        _, request = load(conn, approval_id, who)
        trace = store.trace_of(conn, approval_id)
    decision = ctx.signer.sign(build(who, request, ctx.clock.now(), kind, action_hash, **fields))
    # Sent in the trace the approval was requested in: the run keeps one trace across the human.
    with telemetry.continued(trace):
        await ctx.bus.publish(decision)
    record = await _applied(ctx, decision.event_id)
    with ctx.engine.connect() as conn:
        approval, _ = load(conn, approval_id, who)
    result = DecisionResult(
        approval=approval_out(approval), decision=decision_out(record) if record else None
    )
    if record is None:
        return 202, result
    if record.outcome == "refused":
        status = STATUS_OF.get(record.code or "", 409)
        raise ApiError(status, record.code or "refused", record.reason or "refused")
    return 200, result


async def _applied(ctx: ApiContext, decision_event_id: str) -> store.DecisionRecord | None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with ctx.engine.connect() as conn:
            record = store.decision_of(conn, decision_event_id)
        if record is not None:
            return record
        await asyncio.sleep(POLL_S)
    return None
