"""HTTP tools against a real local server: the key is sent, egress is guarded (SSRF), the
response is capped, secrets go in headers and never come back out, dry runs send nothing."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from charter.tools import ToolContext, ToolSpec, http_tool
from services.executor import egress
from services.executor.failure import ToolFailure
from services.executor.tools import Limits, call


class Params(BaseModel):
    n: int


class Result(BaseModel):
    doubled: int


class _Endpoint(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]] = []

    def _answer(self, code: int, payload: bytes, location: str | None = None) -> None:
        self.send_response(code)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        _Endpoint.calls.append(
            {
                "path": self.path,
                "key": self.headers.get("Idempotency-Key"),
                "auth": self.headers.get("Authorization"),
                "body": body,
            }
        )
        port = cast(tuple[str, int], self.server.server_address)[1]
        if self.path == "/away":
            return self._answer(307, b"{}", "http://example.invalid/steal")
        if self.path == "/to-localhost":  # same port, other host name
            return self._answer(307, b"{}", f"http://localhost:{port}/ok")
        if self.path == "/other-port":  # same host, another service on it
            return self._answer(307, b"{}", f"http://127.0.0.1:{port + 1}/ok")
        if self.path == "/here":
            return self._answer(307, b"{}", "/ok")
        if self.path == "/down":
            return self._answer(503, b'{"error": "down"}')
        if self.path == "/broken":
            return self._answer(500, b'{"error": "half done"}')
        if self.path == "/echo-auth":
            return self._answer(
                200, json.dumps({"doubled": 0, "seen": self.headers["Authorization"]}).encode()
            )
        if self.path == "/huge":
            return self._answer(200, json.dumps({"doubled": 1, "pad": "x" * 50_000}).encode())
        n = body.get("n", 0) if body else int(urlsplit(self.path).query.partition("=")[2] or 0)
        return self._answer(200, json.dumps({"doubled": int(n) * 2}).encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Endpoint.calls.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(
        idempotency_key="run:0",
        run_id="run",
        agent="a",
        environment="production",
        data_dir=tmp_path,
        secrets={"TICKETS_TOKEN": "s3cr3t-canary-value"},
    )


def _run(
    spec: ToolSpec,
    ctx: ToolContext,
    private: tuple[str, ...] = ("127.0.0.1",),
    limit: int = 10_000,
    params: dict[str, Any] | None = None,
) -> Any:
    assert spec.http is not None

    async def go() -> dict[str, Any]:
        async with egress.client(egress.Rule.of(spec.http.allowed_hosts, private)) as client:  # type: ignore[union-attr]
            return await call(
                spec, params or {"n": 4}, ctx, http=client, limits=Limits(max_result_bytes=limit)
            )

    return asyncio.run(go())


def test_an_http_tool_sends_the_idempotency_key(endpoint: str, ctx: ToolContext) -> None:
    spec = http_tool("double", method="POST", url=f"{endpoint}/ok", params=Params, result=Result)
    assert _run(spec, ctx) == {"doubled": 8}
    assert _Endpoint.calls == [{"path": "/ok", "key": "run:0", "auth": None, "body": {"n": 4}}]


def test_get_sends_the_parameters_as_the_query_and_fills_the_path(endpoint: str, ctx: ToolContext) -> None:
    spec = http_tool("double", method="GET", url=f"{endpoint}/double/{{n}}", params=Params, result=Result)
    assert _run(spec, ctx) == {"doubled": 0}  # n went into the path, not the query
    assert _Endpoint.calls[0]["path"] == "/double/4"


def test_a_private_address_is_refused_unless_allowlisted(endpoint: str, ctx: ToolContext) -> None:
    spec = http_tool("double", method="POST", url=f"{endpoint}/ok", params=Params)
    with pytest.raises(ToolFailure, match="non-public address") as err:
        _run(spec, ctx, private=())
    assert err.value.error_type == "EgressDenied"
    assert not err.value.retryable
    assert _Endpoint.calls == []


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.1",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.0.0.1",
        "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
        "[::127.0.0.1]",
        "[fec0::1]",
    ],
)
def test_names_and_spellings_of_internal_addresses_are_refused(host: str, ctx: ToolContext) -> None:
    # A metadata service, a name that resolves to loopback, short and IPv4-mapped forms.
    spec = http_tool("meta", method="GET", url=f"http://{host}:9/latest/meta-data", params=Params)
    with pytest.raises(ToolFailure, match="non-public address"):
        _run(spec, ctx, private=())


def test_a_host_from_the_parameters_must_be_allowlisted(endpoint: str, ctx: ToolContext) -> None:
    class Fetch(BaseModel):
        n: int

    spec = http_tool(
        "fetch", method="GET", url="http://{n}.example.com/", params=Fetch, hosts=["api.example.com"]
    )
    with pytest.raises(ToolFailure, match="not allowlisted"):
        _run(spec, ctx)


def test_redirects_stay_on_the_same_origin(endpoint: str, ctx: ToolContext) -> None:
    here = http_tool("double", method="POST", url=f"{endpoint}/here", params=Params, result=Result)
    assert _run(here, ctx) == {"doubled": 8}  # followed (307 keeps the body): same origin
    for path in ("/away", "/to-localhost", "/other-port"):
        _Endpoint.calls.clear()
        spec = http_tool("double", method="POST", url=f"{endpoint}{path}", params=Params)
        with pytest.raises(ToolFailure, match=r"redirect from http://127\.0\.0\.1") as err:
            _run(spec, ctx, private=("127.0.0.1", "localhost"))
        assert err.value.error_type == "EgressDenied"
        assert len(_Endpoint.calls) == 1


def test_server_errors_are_transient_and_responses_are_capped(endpoint: str, ctx: ToolContext) -> None:
    down = http_tool("double", method="POST", url=f"{endpoint}/down", params=Params)
    with pytest.raises(ToolFailure, match="HTTP 503") as err:
        _run(down, ctx)
    assert err.value.retryable
    assert err.value.transient
    assert err.value.unsent  # 503: not processed, so even a non-idempotent tool may try again
    broken = http_tool("double", method="POST", url=f"{endpoint}/broken", params=Params)
    with pytest.raises(ToolFailure, match="HTTP 500") as err:
        _run(broken, ctx)
    assert not err.value.unsent  # a 500 may have acted: only an idempotent tool is called again
    huge = http_tool("double", method="POST", url=f"{endpoint}/huge", params=Params)
    with pytest.raises(ToolFailure, match="exceeds"):
        _run(huge, ctx, limit=1000)
    capped = http_tool("double", method="POST", url=f"{endpoint}/huge", params=Params, max_response_bytes=100)
    with pytest.raises(ToolFailure, match="exceeds 100 bytes"):
        _run(capped, ctx)


def test_a_name_that_does_not_resolve_is_unreachable(ctx: ToolContext) -> None:
    spec = http_tool("double", method="POST", url="http://no-such-host.invalid/x", params=Params)
    with pytest.raises(ToolFailure) as err:
        _run(spec, ctx)
    assert err.value.error_type == "Unreachable"
    assert err.value.unsent


def test_a_parameter_cannot_climb_the_path(endpoint: str, ctx: ToolContext) -> None:
    class Ref(BaseModel):
        n: str

    spec = http_tool("get", method="GET", url=f"{endpoint}/orders/{{n}}/items", params=Ref)
    with pytest.raises(ToolFailure, match="path segment"):
        _run(spec, ctx, params={"n": ".."})
    assert _Endpoint.calls == []


def test_a_secret_that_cannot_be_a_header_is_refused_by_name(endpoint: str, ctx: ToolContext) -> None:
    spec = http_tool(
        "double", method="POST", url=f"{endpoint}/ok", params=Params, headers={"X-Key": "${TICKETS_TOKEN}"}
    )
    bad = ToolContext(
        "k", "r", "a", "production", ctx.data_dir, secrets={"TICKETS_TOKEN": "line\nbreak-value"}
    )
    with pytest.raises(ToolFailure, match="secret TICKETS_TOKEN cannot go in a header") as err:
        _run(spec, bad)
    assert "break-value" not in str(err.value)
    assert _Endpoint.calls == []


def test_an_unreachable_endpoint_is_retryable_and_not_in_doubt(ctx: ToolContext) -> None:
    spec = http_tool("double", method="POST", url="http://127.0.0.1:9/x", params=Params)
    with pytest.raises(ToolFailure) as err:
        _run(spec, ctx)
    assert err.value.retryable
    assert not err.value.in_doubt  # nothing was sent


def test_secrets_go_in_headers_by_reference(endpoint: str, ctx: ToolContext) -> None:
    spec = http_tool(
        "double",
        method="POST",
        url=f"{endpoint}/echo-auth",
        params=Params,
        headers={"Authorization": "Bearer ${TICKETS_TOKEN}"},
    )
    assert spec.secrets == ("TICKETS_TOKEN",)
    assert _run(spec, ctx)["seen"] == "Bearer s3cr3t-canary-value"  # the executor redacts it after


def test_a_dry_run_sends_nothing_and_says_what_it_would_have_sent(
    endpoint: str, ctx: ToolContext, tmp_path: Path
) -> None:
    spec = http_tool(
        "double",
        method="POST",
        url=f"{endpoint}/ok",
        params=Params,
        result=Result,
        headers={"Authorization": "Bearer ${TICKETS_TOKEN}"},
    )
    dry = ToolContext(
        idempotency_key="run:0",
        run_id="run",
        agent="a",
        environment="staging",
        data_dir=tmp_path,
        dry_run=True,
    )
    would = _run(spec, dry)["would_send"]
    assert would["url"] == f"{endpoint}/ok"
    assert would["json"] == {"n": 4}
    assert would["headers"]["Authorization"] == "Bearer ${TICKETS_TOKEN}"  # the reference, not the value
    assert _Endpoint.calls == []
