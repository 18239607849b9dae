"""Calling tools: parameters validated before, results validated after, time bounded.

Python tools run in a worker thread (or as coroutines) under their declared timeout. HTTP tools
go through httpx to allowlisted hosts only, never follow redirects, carry the action's
`Idempotency-Key`, and have their response size capped.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from charter.events import canonical_json
from charter.tools import HttpTarget, ToolContext, ToolError, ToolSpec


class ToolFailure(Exception):
    def __init__(self, message: str, *, retryable: bool, error_type: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.error_type = error_type


def _summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'value'}: {first['msg']}"


async def call(
    spec: ToolSpec,
    parameters: dict[str, Any],
    ctx: ToolContext,
    *,
    http: httpx.AsyncClient,
    allowed_hosts: frozenset[str],
    max_result_bytes: int,
) -> dict[str, Any]:
    try:
        params = spec.params.model_validate(parameters)
    except ValidationError as exc:
        raise ToolFailure(
            f"invalid parameters: {_summary(exc)}", retryable=False, error_type="InvalidParameters"
        ) from exc
    try:
        if spec.func is not None:
            raw = await asyncio.wait_for(_run_python(spec.func, params, ctx), spec.timeout_s)
        elif spec.http is not None:
            async with asyncio.timeout(spec.timeout_s):
                raw = await _run_http(
                    spec.http,
                    params=params,
                    ctx=ctx,
                    http=http,
                    allowed_hosts=allowed_hosts,
                    max_bytes=max_result_bytes,
                )
        else:
            raise ToolFailure("tool has no implementation", retryable=False, error_type="NotImplemented")
    except TimeoutError as exc:
        raise ToolFailure(f"timed out after {spec.timeout_s}s", retryable=True, error_type="Timeout") from exc
    result = _validate_result(spec, raw)
    if len(canonical_json(result).encode()) > max_result_bytes:
        raise ToolFailure(
            f"result exceeds {max_result_bytes} bytes", retryable=False, error_type="ResultTooLarge"
        )
    return result


async def _run_python(func: Callable[..., Any], params: BaseModel, ctx: ToolContext) -> Any:
    try:
        if inspect.iscoroutinefunction(func):
            return await func(params, ctx)
        # A thread cannot be killed: on timeout the call is abandoned, not stopped.
        return await asyncio.to_thread(func, params, ctx)
    except ToolError as exc:
        raise ToolFailure(str(exc), retryable=exc.retryable, error_type="ToolError") from exc
    except (TimeoutError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise ToolFailure(
            f"{type(exc).__name__}: {exc}", retryable=False, error_type=type(exc).__name__
        ) from exc


async def _run_http(
    target: HttpTarget,
    *,
    params: BaseModel,
    ctx: ToolContext,
    http: httpx.AsyncClient,
    allowed_hosts: frozenset[str],
    max_bytes: int,
) -> Any:
    if target.host not in allowed_hosts:
        raise ToolFailure(
            f"host {target.host!r} is not allowlisted", retryable=False, error_type="HostNotAllowed"
        )
    try:
        async with http.stream(
            target.method,
            target.url,
            json=params.model_dump(mode="json"),
            headers={"Idempotency-Key": ctx.idempotency_key},
            follow_redirects=False,
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ToolFailure(
                        f"response exceeds {max_bytes} bytes", retryable=False, error_type="ResultTooLarge"
                    )
    except httpx.TransportError as exc:
        raise ToolFailure(f"{type(exc).__name__}: {exc}", retryable=True, error_type="Unreachable") from exc
    status = response.status_code
    if status >= 500 or status == 429:
        raise ToolFailure(f"HTTP {status}", retryable=True, error_type="ServerError")
    if status >= 300:
        raise ToolFailure(
            f"HTTP {status}: {bytes(body[:200]).decode(errors='replace')}",
            retryable=False,
            error_type="Refused",
        )
    try:
        return json.loads(body) if body else {}
    except ValueError as exc:
        raise ToolFailure("response is not JSON", retryable=False, error_type="BadResponse") from exc


def _validate_result(spec: ToolSpec, raw: Any) -> dict[str, Any]:
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(mode="json")
    if spec.result is not None:
        try:
            raw = spec.result.model_validate(raw).model_dump(mode="json")
        except ValidationError as exc:
            raise ToolFailure(
                f"invalid result: {_summary(exc)}", retryable=False, error_type="InvalidResult"
            ) from exc
    if not isinstance(raw, dict):
        raw = {"value": raw}
    return dict(json.loads(canonical_json(raw)))
