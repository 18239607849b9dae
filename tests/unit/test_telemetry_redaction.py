"""Spans are redacted before any exporter sees them: an exception that quotes a secret is recorded
on its span as status, message and traceback, and those reached the trace file and the collector."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from charter import telemetry
from charter.config import Settings
from charter.secrets import REDACTED, Secrets, guard_logs

CANARY = "canary-7d2e9b41c0a3"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    # The redactions a test registers, and the provider it sets up, stay with that test.
    monkeypatch.setattr(telemetry, "_redactors", [])
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)


def _call_tool(provider: TracerProvider) -> None:
    """A tool call whose span records an error that quotes the secret, as the executor's does."""
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("execute", attributes={"tool.args": f"--token={CANARY}"}) as span:
        span.add_event("called", {"argv": ("tool", CANARY)})
        raise RuntimeError(f"401 for token {CANARY}")


def _fail_with_secret(provider: TracerProvider) -> None:
    with pytest.raises(RuntimeError):
        _call_tool(provider)


def _file_traces(tmp_path: Path) -> str:
    provider = telemetry.setup_tracing("executor", Settings(home=tmp_path, trace_exporter="file"))
    _fail_with_secret(provider)
    provider.shutdown()
    return (Settings(home=tmp_path).logs_dir / "traces-executor.jsonl").read_text()


def test_the_file_exporter_writes_no_secret_from_an_exception(tmp_path: Path) -> None:
    guard_logs(Secrets({"MY_TOKEN": CANARY}))  # as the executor wires its secrets
    written = _file_traces(tmp_path)
    assert '"name":"execute"' in written
    assert '"name":"exception"' in written
    assert f"401 for token {REDACTED}" in written  # status description and exception.message
    assert "exception.stacktrace" in written
    assert CANARY not in written


def test_a_span_is_exported_whole_when_it_holds_no_known_secret(tmp_path: Path) -> None:
    # Also what the test above guards against: the SDK records message and traceback as they are.
    telemetry.redact_spans(Secrets({"OTHER_TOKEN": "some-other-value"}).redact)
    written = _file_traces(tmp_path)
    # Status, exception message and traceback, the attribute, the event's attribute.
    assert written.count(CANARY) >= 5
    assert REDACTED not in written


class _Collector(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]]  # each server's own list, set on its handler class

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []
    handler = type("Collector", (_Collector,), {"bodies": bodies})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_otlp_exporter_sends_no_secret(tmp_path: Path, collector: tuple[str, list[bytes]]) -> None:
    url, bodies = collector
    guard_logs(Secrets({"MY_TOKEN": CANARY}))
    settings = Settings(home=tmp_path, trace_exporter="otlp", otlp_endpoint=url)
    provider = telemetry.setup_tracing("executor", settings)
    _fail_with_secret(provider)
    provider.shutdown()
    sent = b"".join(bodies)
    assert b"exception.stacktrace" in sent  # protobuf keeps strings as they are
    assert REDACTED.encode() in sent
    assert CANARY.encode() not in sent
