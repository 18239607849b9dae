"""The web console: pending approvals with their full context, decisions, runs and their
timelines, and the audit log's verification status. Plain server-rendered HTML (Jinja2), no
front-end build, no script: a page that is waiting on something refreshes itself.

Signing in takes the same credential as the API (an API token or an OIDC JWT), kept in an
HttpOnly, SameSite=Strict cookie scoped to /console. Every form also carries a token derived
from that credential, which another site cannot know, against cross-site request forgery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from charter.describe import REFUSED_ATTEMPT
from charter.identity.principal import Principal
from charter.identity.roles import Permission, approver_roles
from services.approvals import store
from services.approvals.api import ApiContext, ApiError, authenticate, context
from services.approvals.routes import approval_detail, list_runs, run_detail
from services.approvals.submit import approval_out, submit
from services.audit import views
from services.audit.verify import verify

COOKIE = "charter_session"
templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
# `{% if e.text is refused %}`: a timeline entry that is a refused attempt is marked as one, so
# a forged or refused decision is never read as one more step of the run.
templates.env.tests["refused"] = lambda text: isinstance(text, str) and text.startswith(REFUSED_ATTEMPT)
router = APIRouter(prefix="/console", include_in_schema=False)
Ctx = Annotated[ApiContext, Depends(context)]


class SignIn(Exception):
    """No usable session: go to the sign-in page."""


def csrf_token(credential: str) -> str:
    return hmac.new(b"charter-console-csrf", credential.encode(), hashlib.sha256).hexdigest()[:32]


async def session(request: Request) -> tuple[Principal, str]:
    credential = request.cookies.get(COOKIE)
    if not credential:
        raise SignIn
    try:
        who = await authenticate(context(request), credential)
    except ApiError:
        raise SignIn from None
    return who, csrf_token(credential)


Session = Annotated[tuple[Principal, str], Depends(session)]


def page(
    request: Request, name: str, who: Principal | None, csrf: str = "", status: int = 200, **data: Any
) -> HTMLResponse:
    values = {"who": who, "csrf": csrf, "Permission": Permission, **data}
    return templates.TemplateResponse(request, name, values, status_code=status)


def refuse(request: Request, who: Principal, csrf: str, exc: ApiError) -> HTMLResponse:
    return page(request, "error.html", who, csrf, status=exc.status, error=exc)


def install(app: FastAPI) -> None:
    @app.exception_handler(SignIn)
    async def sign_in(_request: Request, _exc: SignIn) -> RedirectResponse:
        return RedirectResponse("/console/login", status_code=303)

    app.include_router(router)


@router.get("", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/console/approvals", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, error: str | None = None) -> HTMLResponse:
    return page(request, "login.html", None, error=error)


@router.post("/login")
async def login(request: Request, token: Annotated[str, Form(max_length=8192)]) -> Response:
    token = token.strip()
    try:
        await authenticate(context(request), token)
    except ApiError as exc:
        return RedirectResponse(f"/console/login?error={quote(exc.message)}", status_code=303)
    response = RedirectResponse("/console/approvals", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/console")
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.get("/approvals", response_class=HTMLResponse)
def approvals_page(request: Request, ctx: Ctx, s: Session) -> HTMLResponse:
    who, csrf = s
    if not who.may(Permission.READ_APPROVALS):
        return refuse(request, who, csrf, ApiError(403, "forbidden", f"{who.user} may not read approvals"))
    roles = None if who.may(Permission.READ_ALL_APPROVALS) else sorted(approver_roles(who.roles))
    with ctx.engine.connect() as conn:
        pending = store.listing(conn, "pending", roles=roles, tenants=who.tenant_scope)
        every = store.listing(conn, None, limit=1000, roles=roles, tenants=who.tenant_scope)
    recent = [a for a in every if a.status != "pending"][-20:]
    return page(
        request,
        "approvals.html",
        who,
        csrf,
        pending=[approval_out(a) for a in pending],
        recent=[approval_out(a) for a in reversed(recent)],
    )


@router.get("/approvals/{approval_id}", response_class=HTMLResponse)
def approval_page(
    request: Request, approval_id: str, ctx: Ctx, s: Session, done: str | None = None
) -> HTMLResponse:
    who, csrf = s
    try:
        if not who.may(Permission.READ_APPROVALS):
            raise ApiError(403, "forbidden", f"{who.user} may not read approvals")
        detail = approval_detail(ctx, who, approval_id)
    except ApiError as exc:
        return refuse(request, who, csrf, exc)
    may_decide = who.may(Permission.DECIDE) and bool(set(who.roles) & set(detail.approval.roles))
    return page(
        request,
        "approval.html",
        who,
        csrf,
        d=detail,
        done=done,
        may_decide=may_decide,
        parameters_json=json.dumps(detail.approval.parameters, indent=2, sort_keys=True),
    )


@router.post("/approvals/{approval_id}/decide")
async def decide(
    *,
    request: Request,
    approval_id: str,
    ctx: Ctx,
    s: Session,
    decision: Annotated[str, Form(pattern="^(approve|reject|amend)$")],
    action_hash: Annotated[str, Form(max_length=64)],
    csrf_field: Annotated[str, Form(alias="csrf", max_length=64)],
    note: Annotated[str, Form(max_length=2000)] = "",
    parameters: Annotated[str, Form(max_length=100_000)] = "",
) -> Response:
    who, csrf = s
    if not hmac.compare_digest(csrf_field, csrf):
        return refuse(
            request, who, csrf, ApiError(403, "forbidden", "the form is stale or not from this console")
        )
    try:
        if not who.may(Permission.DECIDE):
            raise ApiError(403, "forbidden", f"{who.user} may not decide approvals")
        fields: dict[str, Any] = {"comment": note or None}
        if decision == "amend":
            fields["parameters"] = _parameters(parameters)
        if decision == "reject":
            fields = {"reason": note or None}
        kind = "reject" if decision == "reject" else "approve"
        _, result = await submit(ctx, who, approval_id, kind, action_hash, **fields)
    except ApiError as exc:
        return refuse(request, who, csrf, exc)
    outcome = result.approval.status if result.decision else "sent"
    return RedirectResponse(f"/console/approvals/{approval_id}?done={quote(outcome)}", status_code=303)


def _parameters(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ApiError(422, "invalid", f"the edited parameters are not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid", "the edited parameters must be a JSON object")
    return value


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, ctx: Ctx, s: Session) -> HTMLResponse:
    who, csrf = s
    if not who.may(Permission.READ_RUNS):
        return refuse(request, who, csrf, ApiError(403, "forbidden", f"{who.user} may not read runs"))
    return page(request, "runs.html", who, csrf, runs=list_runs(ctx, who, 100).runs)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, ctx: Ctx, s: Session) -> HTMLResponse:
    who, csrf = s
    try:
        if not who.may(Permission.READ_RUNS):
            raise ApiError(403, "forbidden", f"{who.user} may not read runs")
        detail = run_detail(ctx, who, run_id)
    except ApiError as exc:
        return refuse(request, who, csrf, exc)
    ended = detail.run.status in views.TERMINAL
    return page(request, "run.html", who, csrf, d=detail, refresh=not ended)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, ctx: Ctx, s: Session) -> HTMLResponse:
    who, csrf = s
    if not who.may(Permission.READ_AUDIT):
        return refuse(
            request, who, csrf, ApiError(403, "forbidden", f"{who.user} may not read the audit log")
        )
    with ctx.audit_engine.connect() as conn:
        result = verify(conn, ctx.audit_key)
    return page(request, "audit.html", who, csrf, result=result)
