"""The `/v1` API: business events in; runs, approvals and the audit log out; decisions on
approvals; API tokens. Roles decide who may call what (charter.identity.roles)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from charter import topics
from charter.clock import new_id
from charter.events import RunInstructed, RunStarted, TriggerReceived
from charter.identity import tokens
from charter.identity.principal import EVERY_TENANT, Principal, beyond, granted
from charter.identity.roles import Permission, approver_roles
from charter.identity.users import Directory
from charter.stack import readiness
from charter.topics import Topic
from services.approvals import store
from services.approvals.api import ApiContext, ApiError, context, principal, require
from services.approvals.api_models import (
    ApprovalDetail,
    ApprovalList,
    ApproveIn,
    DecisionResult,
    ErrorBody,
    EventAccepted,
    EventIn,
    Health,
    InstructIn,
    Me,
    Problem,
    RejectIn,
    RunDetail,
    RunInstructionAccepted,
    RunList,
    RunStart,
    RunSummary,
    TimelineItem,
    TokenIn,
    TokenIssued,
    TokenList,
    TokenOut,
    Verification,
)
from services.approvals.submit import approval_out, decision_out, load, submit
from services.audit import store as audit_store
from services.audit import views
from services.audit.verify import verify

Ctx = Annotated[ApiContext, Depends(context)]
STATUSES = "|".join(("all", *store.STATUSES))


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    # 400: a body that is not JSON at all; 422: JSON that breaks the model.
    documented = {401, 403, 422, *codes}
    return {code: {"model": ErrorBody} for code in sorted(documented)}


router = APIRouter(prefix="/v1")


# Probes answer without a token and say nothing but whether the stack is up: a load balancer
# or an orchestrator holds no credentials, and must learn nothing from asking.
@router.get("/health", response_model=Health)
def health() -> Health:
    """Liveness: the API process answers."""
    return Health(status="ok")


@router.get("/ready", response_model=Health, responses={503: {"model": Health}})
def ready(ctx: Ctx, response: Response) -> Health:
    """Readiness: the store answers, and every service of this instance has joined its group."""
    try:
        with ctx.engine.connect() as conn:
            store.counts(conn)
    except SQLAlchemyError:
        response.status_code = 503
        return Health(status="not ready")
    if not readiness.all_ready(ctx.settings):
        response.status_code = 503
        return Health(status="not ready")
    return Health(status="ready")


@router.get("/metrics", responses=_errors(), response_class=Response)
def metrics(ctx: Ctx, _who: Annotated[Principal, Depends(require(Permission.READ_METRICS))]) -> Response:
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/me", response_model=Me, responses=_errors())
def me(who: Annotated[Principal, Depends(principal)]) -> Me:
    return Me(
        user=who.user,
        email=who.email,
        roles=sorted(who.roles),
        via=who.via,
        token_id=who.token_id,
        tenants=sorted(who.tenants),
    )


def _tenant_for(ctx: ApiContext, who: Principal, asked: str | None) -> str:
    """The tenant an event published by `who` is for: the one asked, if they act for it; else
    their only tenant, or the service's own. Never one they do not act for."""
    scope = who.tenant_scope
    tenant = asked or (next(iter(scope)) if scope is not None and len(scope) == 1 else ctx.settings.tenant)
    if not who.acts_for(tenant):
        acts = ", ".join(sorted(who.tenants))
        raise ApiError(403, "forbidden", f"{who.user} acts for {acts}, not for tenant {tenant}")
    return tenant


@router.post("/events", status_code=202, response_model=EventAccepted, responses=_errors(400, 413))
async def publish_event(
    body: EventIn, request: Request, ctx: Ctx, who: Annotated[Principal, Depends(require(Permission.PUBLISH))]
) -> EventAccepted:
    """Publish a business event (a trigger) for a tenant the caller acts for; the runs it starts
    name the caller as submitter, proven by the approvals service's signature on the event."""
    tenant = _tenant_for(ctx, who, body.tenant)
    size = len(json.dumps(body.data))
    if size > ctx.settings.max_message_bytes // 2:
        raise ApiError(
            413,
            "too_large",
            f"event data is {size} bytes; the limit is {ctx.settings.max_message_bytes // 2}",
        )
    event_id = new_id()
    trigger = ctx.signer.sign(
        TriggerReceived.create(
            event_id=event_id,
            now=ctx.clock.now(),
            tenant=tenant,
            correlation_id=body.correlation_id or event_id,
            name=body.name,
            data=body.data,
            source=body.source,
            submitted_by=who.user,
        )
    )
    await ctx.bus.publish(trigger)
    told = ctx.roster.forecast(body.name, body.data, event_id)
    return EventAccepted(
        event_id=event_id,
        name=body.name,
        submitted_by=who.user,
        starts=None if told.error else [RunStart(agent=a, run_id=r) for a, r in told.starts],
        awaited_by=told.awaited_by,
        unevaluable=[str(u) for u in told.unevaluable],
        note=" ".join(told.lines(topics.dlq_name(topics.name(ctx.settings, Topic.TRIGGERS)))),
    )


def _visible_runs(conn: Connection, who: Principal) -> set[str] | None:
    """The runs a caller may read, of their tenants': all (None), or for a plain approver those
    with approvals their roles may decide."""
    if who.may(Permission.READ_ALL_APPROVALS):
        return None
    roles = sorted(approver_roles(who.roles))
    return {a.run_id for a in store.listing(conn, None, limit=10_000, roles=roles, tenants=who.tenant_scope)}


def _summary(s: views.Summary) -> RunSummary:
    return RunSummary(
        run_id=s.run_id,
        tenant=s.tenant,
        agent=s.agent,
        trigger=s.trigger,
        started=s.started,
        status=s.status,
        last=s.last,
        triggered_by=s.triggered_by,
    )


def _timeline(entries: list[views.Entry]) -> list[TimelineItem]:
    return [
        TimelineItem(
            seq=e.seq,
            occurred_at=e.occurred_at,
            event_type=e.event_type,
            topic=e.topic,
            text=e.text,
            event=views.as_json(e.event) if e.event else None,
        )
        for e in entries
    ]


@router.get("/runs", response_model=RunList, responses=_errors())
def list_runs(
    ctx: Ctx,
    who: Annotated[Principal, Depends(require(Permission.READ_RUNS))],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunList:
    with ctx.engine.connect() as conn:
        visible = _visible_runs(conn, who)
    with ctx.audit_engine.connect() as conn:
        summaries = views.recent(conn, limit=limit if visible is None else 10_000, tenants=who.tenant_scope)
    shown = [s for s in summaries if visible is None or s.run_id in visible][:limit]
    return RunList(runs=[_summary(s) for s in shown])


def _named_run(conn: Connection, run_id: str, tenants: Collection[str] | None) -> str:
    """The run `run_id` names: its full id, or the first characters of only one run's (of the
    caller's tenants, so a prefix says nothing about another tenant's runs)."""
    named = audit_store.run_ids(conn, prefix=run_id, limit=2, tenants=tenants)
    return named[0] if run_id not in named and len(named) == 1 else run_id


def _started(entries: list[views.Entry]) -> RunStarted | None:
    return next((e.event for e in entries if isinstance(e.event, RunStarted)), None)


def run_detail(ctx: ApiContext, who: Principal, run_id: str) -> RunDetail:
    """The run `run_id` names, if `who` may see it."""
    with ctx.engine.connect() as conn:
        visible = _visible_runs(conn, who)
    with ctx.audit_engine.connect() as conn:
        run_id = _named_run(conn, run_id, who.tenant_scope)
        entries = views.timeline(conn, run_id)
        trigger = views.trigger_of(conn, entries)
    started = _started(entries)
    # A run whose start is not in the log yet names no tenant: only someone acting for every
    # tenant may see it (its steps can reach the audit before its start does).
    hidden = not who.acts_for(started.envelope.tenant) if started else who.tenant_scope is not None
    if not entries or hidden or (visible is not None and run_id not in visible):
        raise ApiError(404, "not_found", f"no run {run_id}")
    return RunDetail(
        run=_summary(views.summarize(run_id, entries)),
        trigger=views.as_json(trigger) if trigger else None,
        timeline=_timeline(entries),
    )


@router.get("/runs/{run_id}", response_model=RunDetail, responses=_errors(404))
def get_run(
    run_id: str, ctx: Ctx, who: Annotated[Principal, Depends(require(Permission.READ_RUNS))]
) -> RunDetail:
    return run_detail(ctx, who, run_id)


async def _instruct(
    ctx: ApiContext, who: Principal, run_id: str, command: str, instruction: str
) -> RunInstructionAccepted:
    with ctx.audit_engine.connect() as conn:
        run_id = _named_run(conn, run_id, who.tenant_scope)
        entries = views.timeline(conn, run_id)
    started = _started(entries)
    if started is None or not who.acts_for(started.envelope.tenant):
        raise ApiError(404, "not_found", f"no run {run_id}")
    status = views.summarize(run_id, entries).status
    allowed = (
        ("escalated",) if command == "resume" else ("running", "awaiting approval", "waiting", "escalated")
    )
    if status not in allowed:
        raise ApiError(
            409,
            "conflict",
            f"run {run_id} is {status}; only a run that is {' or '.join(allowed)} may be {command}d",
        )
    event_id = new_id()
    # Signed: the planner resumes or cancels a run only on the approvals service's word.
    instructed = ctx.signer.sign(
        RunInstructed.create(
            event_id=event_id,
            now=ctx.clock.now(),
            tenant=started.envelope.tenant,
            agent=started.envelope.agent,
            run_id=run_id,
            correlation_id=started.envelope.correlation_id,
            causation_id=started.event_id,
            command=command,
            instruction=instruction,
            instructed_by=who.user,
        )
    )
    await ctx.bus.publish(instructed)
    return RunInstructionAccepted(event_id=event_id, run_id=run_id, command=command, instructed_by=who.user)


@router.post(
    "/runs/{run_id}/resume",
    status_code=202,
    response_model=RunInstructionAccepted,
    responses=_errors(400, 404, 409),
)
async def resume_run(
    run_id: str,
    body: InstructIn,
    ctx: Ctx,
    who: Annotated[Principal, Depends(require(Permission.DIRECT_RUNS))],
) -> RunInstructionAccepted:
    """Resume an escalated run (its id, or the first characters of only one run's): a
    model-planned run reads `instruction` next; a playbook run proposes the step it stopped at
    again."""
    return await _instruct(ctx, who, run_id, "resume", body.instruction)


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=RunInstructionAccepted,
    responses=_errors(400, 404, 409),
)
async def cancel_run(
    run_id: str,
    body: InstructIn,
    ctx: Ctx,
    who: Annotated[Principal, Depends(require(Permission.DIRECT_RUNS))],
) -> RunInstructionAccepted:
    """Cancel a running or escalated run (its id, or the first characters of only one run's);
    what it did that can be undone is undone first."""
    return await _instruct(ctx, who, run_id, "cancel", body.instruction)


@router.get("/approvals", response_model=ApprovalList, responses=_errors())
def list_approvals(
    ctx: Ctx,
    who: Annotated[Principal, Depends(require(Permission.READ_APPROVALS))],
    status: Annotated[str, Query(pattern=f"^({STATUSES})$")] = "pending",
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> ApprovalList:
    """Approvals of the caller's tenants, oldest first: all of them for operators, auditors and
    admins; for an approver, those one of their roles may decide."""
    roles = None if who.may(Permission.READ_ALL_APPROVALS) else sorted(approver_roles(who.roles))
    with ctx.engine.connect() as conn:
        rows = store.listing(
            conn, None if status == "all" else status, limit=limit, roles=roles, tenants=who.tenant_scope
        )
    return ApprovalList(approvals=[approval_out(a) for a in rows])


def approval_detail(ctx: ApiContext, who: Principal, approval_id: str) -> ApprovalDetail:
    with ctx.engine.connect() as conn:
        approval, request = load(conn, approval_id, who)
        decisions = store.decisions_of(conn, approval_id)
    with ctx.audit_engine.connect() as conn:
        entries = views.timeline(conn, approval.run_id)
        trigger = views.trigger_of(conn, entries)
    return ApprovalDetail(
        approval=approval_out(approval),
        policy_ids=request.decision.policy_ids,
        policy_hash=request.decision.policy_hash,
        agent_owner=request.agent_owner,
        triggered_by=request.triggered_by,
        amended_by=request.amended_by,
        decisions=[decision_out(d) for d in decisions],
        trigger=views.as_json(trigger) if trigger else None,
        run=_summary(views.summarize(approval.run_id, entries)) if entries else None,
        timeline=_timeline(entries),
    )


@router.get("/approvals/{approval_id}", response_model=ApprovalDetail, responses=_errors(404))
def get_approval(
    approval_id: str, ctx: Ctx, who: Annotated[Principal, Depends(require(Permission.READ_APPROVALS))]
) -> ApprovalDetail:
    """One approval of the caller's tenants with everything needed to decide it: the action,
    why policy asked, the business event, the run so far, and the decisions made on it."""
    return approval_detail(ctx, who, approval_id)


@router.post(
    "/approvals/{approval_id}/approve",
    response_model=DecisionResult,
    responses={**_errors(400, 404, 409), 202: {"model": DecisionResult}},
)
async def approve(
    approval_id: str,
    body: ApproveIn,
    response: Response,
    ctx: Ctx,
    who: Annotated[Principal, Depends(require(Permission.DECIDE))],
) -> DecisionResult:
    """Approve the action bound to `action_hash`; with `parameters`, approve an edited action
    instead, which goes back to policy as a new proposal."""
    status, result = await submit(
        ctx, who, approval_id, "approve", body.action_hash, comment=body.comment, parameters=body.parameters
    )
    response.status_code = status
    return result


@router.post(
    "/approvals/{approval_id}/reject",
    response_model=DecisionResult,
    responses={**_errors(400, 404, 409), 202: {"model": DecisionResult}},
)
async def reject(
    approval_id: str,
    body: RejectIn,
    response: Response,
    ctx: Ctx,
    who: Annotated[Principal, Depends(require(Permission.DECIDE))],
) -> DecisionResult:
    """Reject the action bound to `action_hash`; its run ends."""
    status, result = await submit(ctx, who, approval_id, "reject", body.action_hash, reason=body.reason)
    response.status_code = status
    return result


@router.get("/audit/verify", response_model=Verification, responses=_errors())
def audit_verify(
    ctx: Ctx, _who: Annotated[Principal, Depends(require(Permission.READ_AUDIT))]
) -> Verification:
    """Check every record against its leaf hash and the tree against the signed heads stored
    with the log; name every problem. (`charter audit verify` also checks the published heads.)"""
    with ctx.audit_engine.connect() as conn:
        result = verify(conn, ctx.audit_key)
    return Verification(
        ok=result.ok,
        rows=result.rows,
        root=result.root.hex(),
        heads=result.heads,
        signed=result.signed,
        problems=[Problem(kind=p.kind, position=p.position, message=p.message) for p in result.problems],
    )


@router.get(
    "/audit/export",
    responses={
        **_errors(),
        200: {"content": {"application/x-ndjson": {}}, "description": "One record a line."},
    },
    response_class=StreamingResponse,
)
def audit_export(
    ctx: Ctx,
    who: Annotated[Principal, Depends(require(Permission.READ_AUDIT))],
    run_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> StreamingResponse:
    """Audit records of the caller's tenants in log order, as JSON lines: leaf hashes, raw bytes
    and decoded event."""

    def lines() -> Iterator[bytes]:
        with ctx.audit_engine.connect() as conn:
            records = views.export(conn, run_id=run_id, since=since, until=until, tenants=who.tenant_scope)
            for record in records:
                yield (json.dumps(record, sort_keys=True) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _token_out(t: tokens.Token, now: datetime) -> dict[str, Any]:
    return {
        "token_id": t.token_id,
        "user": t.user_id,
        "roles": list(t.roles),
        "tenants": list(t.tenants),
        "description": t.description,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
        "last_used_at": t.last_used_at,
        "state": t.state(now),
    }


def _manages(ctx: ApiContext, who: Principal, users: Directory, user_id: str) -> bool:
    """Whether `who` may issue, see and revoke the user's tokens: only for someone whose every
    tenant they act for, so a token never carries anyone past the tenants of who issued it."""
    if who.tenant_scope is None:
        return True
    user = users.get(user_id)
    held = granted(user.tenants, ctx.settings.tenant) if user is not None else frozenset({EVERY_TENANT})
    return EVERY_TENANT not in held and held <= who.tenant_scope


@router.get("/tokens", response_model=TokenList, responses=_errors())
def list_tokens(ctx: Ctx, who: Annotated[Principal, Depends(require(Permission.MANAGE_TOKENS))]) -> TokenList:
    """The tokens of the users whose every tenant the caller acts for."""
    now = ctx.clock.now()
    with ctx.engine.connect() as conn:
        users = ctx.users.current()
        found = [t for t in tokens.listing(conn) if _manages(ctx, who, users, t.user_id)]
    return TokenList(tokens=[TokenOut(**_token_out(t, now)) for t in found])


@router.post("/tokens", status_code=201, response_model=TokenIssued, responses=_errors(400))
def issue_token(
    body: TokenIn, ctx: Ctx, who: Annotated[Principal, Depends(require(Permission.MANAGE_TOKENS))]
) -> TokenIssued:
    """Issue a token to a user in the users file (one whose every tenant the caller acts for),
    scoped to some of their roles and tenants."""
    user = ctx.users.current().get(body.user)
    if user is None:
        raise ApiError(422, "invalid", f"no user {body.user!r} in the users file")
    if not _manages(ctx, who, ctx.users.current(), user.id):
        raise ApiError(403, "forbidden", f"{who.user} does not act for every tenant {user.id} acts for")
    roles = body.roles if body.roles is not None else user.roles
    extra = sorted(set(roles) - set(user.roles))
    if extra:
        raise ApiError(422, "invalid", f"{user.id} does not hold {', '.join(extra)}")
    if not roles:
        raise ApiError(422, "invalid", "a token needs at least one role")
    outside = beyond(granted(user.tenants, ctx.settings.tenant), body.tenants or ())
    if outside:
        raise ApiError(422, "invalid", f"{user.id} does not act for {', '.join(outside)}")
    now = ctx.clock.now()
    expires = now + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    with ctx.engine.begin() as conn:
        record, secret = tokens.issue(
            conn,
            user_id=user.id,
            roles=roles,
            now=now,
            expires_at=expires,
            description=body.description,
            tenants=body.tenants,
        )
    return TokenIssued(**_token_out(record, now), token=secret)


@router.delete("/tokens/{token_id}", status_code=204, responses=_errors(404))
def revoke_token(
    token_id: str, ctx: Ctx, who: Annotated[Principal, Depends(require(Permission.MANAGE_TOKENS))]
) -> Response:
    with ctx.engine.begin() as conn:
        found = tokens.find(conn, token_id)
        if (
            found is None
            or not _manages(ctx, who, ctx.users.current(), found.user_id)
            or not tokens.revoke(conn, token_id, ctx.clock.now())
        ):
            raise ApiError(404, "not_found", f"no active token {token_id}")
    return Response(status_code=204)
