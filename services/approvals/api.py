"""The HTTP API and console, served by the approvals service: its context, errors, and
authentication, and the server that runs it inside the service (app.py puts it together).

Every route but the OpenAPI document itself (`/v1/openapi.json`, published so clients and
tests can read the contract) and the probes (`/v1/health`, `/v1/ready`) needs a credential:
`Authorization: Bearer <token>` on `/v1`, a session cookie holding the same credential in the
console. Roles decide what each may do (charter.identity.roles). Every error has one JSON shape,
`{"error": {"status": 403, "code": "forbidden", "message": "one line"}}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from charter.bus import Bus
from charter.clock import Clock
from charter.config import Settings
from charter.http_server import HttpServer
from charter.identity.principal import Authenticator, Principal, Unauthenticated
from charter.identity.roles import Permission
from charter.identity.users import WatchedDirectory
from charter.signing import Signer, Verifier
from charter.triggering import Roster
from services.approvals.metrics import Metrics

log = logging.getLogger(__name__)
VERSION = "1.0.0"


@dataclass
class ApiContext:
    settings: Settings
    engine: Engine  # the approvals store, which also holds the API tokens
    audit_engine: Engine  # read only: runs and timelines
    bus: Bus
    signer: Signer
    clock: Clock
    users: WatchedDirectory
    auth: Authenticator
    metrics: Metrics
    audit_key: Verifier  # checks the audit's signed tree heads
    # The agents the planner runs, so a publisher is told which of them an event starts.
    roster: Roster = field(init=False)

    def __post_init__(self) -> None:
        self.roster = Roster(self.settings.agents_dir)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = " ".join(message.split())


CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
}
CODES |= {409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "invalid", 500: "internal"}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": {"status": status, "code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return (
        f"{where}: {first.get('msg', 'invalid request')}"
        if where
        else str(first.get("msg", "invalid request"))
    )


def install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid", _validation_message(exc))

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("API request failed: %s", exc)
        return error_response(500, "internal", "internal error; the approvals service log has the details")


_bearer = HTTPBearer(auto_error=False, description="An API token (charter tokens create) or an OIDC JWT.")


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


async def authenticate(ctx: ApiContext, credential: str | None) -> Principal:
    try:
        return await run_in_threadpool(ctx.auth.authenticate, credential)
    except Unauthenticated as exc:
        raise ApiError(401, "unauthenticated", str(exc)) from None


async def principal(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return await authenticate(context(request), creds.credentials if creds else None)


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.may(permission):
            roles = ", ".join(sorted(who.roles)) or "no roles"
            raise ApiError(403, "forbidden", f"{who.user} ({roles}) may not {permission.value}")
        return who

    return check


def run_api(server: HttpServer) -> Callable[[asyncio.Event], Awaitable[Any]]:
    async def api(stop: asyncio.Event) -> None:
        await server.run(stop)

    return api
