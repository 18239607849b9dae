"""Each service's metrics endpoint: Prometheus text at `GET /metrics`, for a scraper holding the
metrics token (`Authorization: Bearer ...`), like every other call into Charter.

Ports are fixed per service from one base (CHARTER_METRICS_PORT), so a scrape configuration and
`charter top` know where each service is without asking anyone.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from charter.config import Settings
from charter.http_server import HttpServer

# The supervisor's order: audit, approvals, executor, policy, planner.
OFFSETS = {"audit": 0, "approvals": 1, "executor": 2, "policy": 3, "planner": 4}
TOKEN_FILE = "metrics.token"  # noqa: S105 (a file name, not a secret)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def port(settings: Settings, service: str) -> int | None:
    # A pool's executor (`executor-payments`) serves where an executor would, on its own host.
    return settings.metrics_port + OFFSETS[service.partition("-")[0]] if settings.metrics_port else None


def token(settings: Settings) -> str:
    """The scrape token: CHARTER_METRICS_TOKEN, else `<keys>/metrics.token`, made on first use
    (0600, created exclusively, so services starting together agree on one)."""
    if settings.metrics_token is not None:
        return settings.metrics_token.get_secret_value()
    path = settings.keys / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32))
    return _read(path)


def _read(path: Path) -> str:
    # A service racing the creator may see the file before its bytes: wait for them.
    for _ in range(50):
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty: delete it and restart to make a new metrics token")


def app(expected: str, registries: Sequence[CollectorRegistry] = ()) -> Starlette:
    wanted = f"Bearer {expected}".encode()

    async def metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, wanted):
            return PlainTextResponse(
                "unauthenticated: send Authorization: Bearer <metrics token>\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        body = b"".join(generate_latest(r) for r in (REGISTRY, *registries))
        return Response(body, media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", metrics)])


def server(
    settings: Settings, service: str, registries: Sequence[CollectorRegistry] = ()
) -> HttpServer | None:
    where = port(settings, service)
    if where is None:
        return None
    return HttpServer(app(token(settings), registries), settings.metrics_host, where, "metrics")
