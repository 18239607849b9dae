"""The approvals service's web application: the `/v1` API and the console, in one FastAPI app."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from services.approvals import console, routes, switches
from services.approvals.api import VERSION, ApiContext, install_errors
from services.approvals.api import __doc__ as API_DOC


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Charter API",
        version=VERSION,
        description=API_DOC,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    install_errors(app)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        ctx.metrics.request(request.method, path, response.status_code, time.perf_counter() - started)
        return response

    app.include_router(routes.router)
    app.include_router(switches.router)
    console.install(app)
    return app
