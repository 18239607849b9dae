"""Calling tools: parameters validated before, results validated after, time bounded.

Python tools run in a worker thread (or as coroutines) under their declared timeout, or, when
declared with a sandbox, in a subprocess of their own under quotas (see sandbox). HTTP tools
go through httpx to their own hosts only (see egress), carry the action's `Idempotency-Key`,
and have their response size capped. In a dry run a tool runs its dry-run path, or for HTTP,
returns the request it would have sent. Every failure says whether the same call may succeed
later (`retryable`) and whether the tool may have acted anyway (`in_doubt`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from charter.events import canonical_json
from charter.tools import SECRET_REF, HttpTarget, ToolContext, ToolError, ToolSpec
from services.executor import sandbox
from services.executor.egress import EgressDenied
from services.executor.failure import ToolFailure

# Failures that never reached the tool: they say nothing about its health.
NOT_REACHED = frozenset({"InvalidParameters", "EgressDenied", "NoDryRun", "NotImplemented", "InvalidHeader"})


@dataclass(frozen=True)
class Limits:
    max_result_bytes: int


def _summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'value'}: {first['msg']}"


async def call(
    spec: ToolSpec,
    parameters: dict[str, Any],
    ctx: ToolContext,
    *,
    http: httpx.AsyncClient | None,
    limits: Limits,
) -> dict[str, Any]:
    try:
        params = spec.params.model_validate(parameters)
    except ValidationError as exc:
        raise ToolFailure(
            f"invalid parameters: {_summary(exc)}", retryable=False, error_type="InvalidParameters"
        ) from exc
    try:
        async with asyncio.timeout(spec.timeout_s):
            raw = await _dispatch(spec, params, ctx, http, limits)
    except TimeoutError as exc:
        raise ToolFailure(
            f"timed out after {spec.timeout_s}s",
            retryable=True,
            error_type="Timeout",
            in_doubt=True,
            transient=True,
        ) from exc
    result = _validate_result(spec, raw, dry_run=ctx.dry_run)
    if len(canonical_json(result).encode()) > limits.max_result_bytes:
        raise ToolFailure(
            f"result exceeds {limits.max_result_bytes} bytes", retryable=False, error_type="ResultTooLarge"
        )
    return result


async def _dispatch(
    spec: ToolSpec, params: BaseModel, ctx: ToolContext, http: httpx.AsyncClient | None, limits: Limits
) -> Any:
    if ctx.dry_run and spec.dry_run != "call":
        if callable(spec.dry_run):
            return await _run_python(spec.dry_run, params, ctx)
        if spec.http is not None:
            return {"would_send": _request(spec.http, params, ctx, with_secrets=False)}
        raise ToolFailure(
            f"{spec.name} has no dry-run path and this environment ({ctx.environment}) is dry-run",
            retryable=False,
            error_type="NoDryRun",
        )
    if spec.func is not None and spec.sandbox is not None:
        return await sandbox.run(spec, params, ctx)
    if spec.func is not None:
        return await _run_python(spec.func, params, ctx)
    if spec.http is not None and http is not None:
        max_bytes = min(limits.max_result_bytes, spec.http.max_response_bytes or limits.max_result_bytes)
        return await _run_http(spec.http, params, ctx, http, (max_bytes, spec.timeout_s))
    raise ToolFailure("tool has no implementation", retryable=False, error_type="NotImplemented")


async def _run_python(func: Callable[..., Any], params: BaseModel, ctx: ToolContext) -> Any:
    try:
        if inspect.iscoroutinefunction(func):
            return await func(params, ctx)
        # A thread cannot be killed: on timeout the call is abandoned, not stopped.
        return await asyncio.to_thread(func, params, ctx)
    except ToolError as exc:
        raise ToolFailure(
            str(exc), retryable=exc.retryable, error_type="ToolError", transient=exc.retryable
        ) from exc
    except (TimeoutError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise ToolFailure(
            f"{type(exc).__name__}: {exc}", retryable=False, error_type=type(exc).__name__
        ) from exc


def _request(
    target: HttpTarget, params: BaseModel, ctx: ToolContext, *, with_secrets: bool
) -> dict[str, Any]:
    """The request the parameters make: `{name}` in the URL filled (path-quoted), the rest as
    the JSON body, or the query for GET. Without secrets, headers show the references only."""
    values = params.model_dump(mode="json")
    used = {name for name in values if "{" + name + "}" in target.url}
    url = target.url
    for name in used:
        if str(values[name]) in {".", ".."}:  # would climb the URL's path
            raise ToolFailure(
                f"parameter {name!r} cannot be a path segment",
                retryable=False,
                error_type="InvalidParameters",
            )
        url = url.replace("{" + name + "}", quote(str(values[name]), safe=""))
    rest = {k: v for k, v in values.items() if k not in used}

    def secret(match: re.Match[str]) -> str:
        value = ctx.secrets[match.group(1)]
        if any(c in value for c in "\r\n\0") or not value.isascii():
            # Named, never quoted: the error must not carry the value.
            raise ToolFailure(
                f"secret {match.group(1)} cannot go in a header (control or non-ASCII characters)",
                retryable=False,
                error_type="InvalidHeader",
            )
        return value

    def fill(header: str) -> str:
        return SECRET_REF.sub(secret, header) if with_secrets else header

    request: dict[str, Any] = {
        "method": target.method,
        "url": url,
        "headers": {
            **{k: fill(v) for k, v in target.headers.items()},
            "Idempotency-Key": ctx.idempotency_key,
        },
    }
    request["params" if target.method == "GET" else "json"] = rest
    return request


async def _run_http(
    target: HttpTarget,
    params: BaseModel,
    ctx: ToolContext,
    http: httpx.AsyncClient,
    limits: tuple[int, float],
) -> Any:
    """`limits`: the response's size cap in bytes and the call's timeout in seconds."""
    status, body = await _send(http, _request(target, params, ctx, with_secrets=True), *limits)
    if status >= 500 or status == 429:
        # 429 and 503 say the request was not processed; any other 5xx may have acted.
        raise ToolFailure(
            f"HTTP {status}",
            retryable=True,
            error_type="ServerError",
            transient=True,
            unsent=status in {429, 503},
        )
    if status >= 300:
        text = body.decode(errors="replace")
        for value in ctx.secrets.values():  # before cutting, so no part of one survives
            text = text.replace(value, "[redacted]")
        raise ToolFailure(f"HTTP {status}: {text[:200]}", retryable=False, error_type="Refused")
    try:
        return json.loads(body) if body else {}
    except ValueError as exc:
        raise ToolFailure("response is not JSON", retryable=False, error_type="BadResponse") from exc


async def _send(
    http: httpx.AsyncClient, request: dict[str, Any], max_bytes: int, timeout_s: float
) -> tuple[int, bytes]:
    try:
        async with http.stream(**request, timeout=timeout_s) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ToolFailure(
                        f"response exceeds {max_bytes} bytes", retryable=False, error_type="ResultTooLarge"
                    )
            return response.status_code, bytes(body)
    except (ToolFailure, TimeoutError):
        raise
    except EgressDenied as exc:
        raise ToolFailure(str(exc), retryable=False, error_type="EgressDenied") from exc
    except httpx.TooManyRedirects as exc:
        raise ToolFailure(str(exc), retryable=False, error_type="TooManyRedirects") from exc
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        # Nothing was sent: safe to try again, whatever the tool.
        raise ToolFailure(
            f"{type(exc).__name__}: {exc}",
            retryable=True,
            error_type="Unreachable",
            transient=True,
            unsent=True,
        ) from exc
    except httpx.TransportError as exc:
        raise ToolFailure(
            f"{type(exc).__name__}: {exc}",
            retryable=True,
            error_type="ConnectionLost",
            in_doubt=True,
            transient=True,
        ) from exc
    except Exception as exc:
        # Not an error httpx classifies: the request may have gone out. Its text may quote
        # the request, so only its type is kept.
        raise ToolFailure(
            f"{type(exc).__name__} during the HTTP call",
            retryable=False,
            error_type="HttpError",
            in_doubt=True,
        ) from exc


def _validate_result(spec: ToolSpec, raw: Any, *, dry_run: bool) -> dict[str, Any]:
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(mode="json")
    # A dry run's answer is what would have been done, not the tool's result type.
    if spec.result is not None and not (dry_run and spec.dry_run != "call" and spec.http is not None):
        try:
            raw = spec.result.model_validate(raw).model_dump(mode="json")
        except ValidationError as exc:
            raise ToolFailure(
                f"invalid result: {_summary(exc)}", retryable=False, error_type="InvalidResult"
            ) from exc
    if not isinstance(raw, dict):
        raw = {"value": raw}
    return dict(json.loads(canonical_json(raw)))
