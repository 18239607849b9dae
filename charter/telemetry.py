"""Tracing and logging, set up once per process.

W3C trace context rides in Kafka headers (`traceparent`, `tracestate`), so the spans of one run
share a trace id across the planner, policy, approvals, executor and audit processes.
Log lines carry the current trace id and run id, so a log line leads to its trace and run.
Every exporter is wrapped so that spans are redacted before they leave the process: a secret in an
exception's message would otherwise reach the trace file or the collector (see `redact_spans`).
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, SpanContext, Status
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from charter.config import Settings

Headers = Sequence[tuple[str, bytes]]
_PROPAGATOR = TraceContextTextMapPropagator()
_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("charter_run_id", default=None)
Redactor = Callable[[str], str]
# Whatever this process must not export: the secrets it resolves register here (charter.secrets),
# after tracing is set up, so the exporters read the list when they export, not when they are made.
_redactors: list[Redactor] = []


class _HeaderGetter(Getter[Headers]):
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [v.decode("latin-1") for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


class _HeaderSetter(Setter[list[tuple[str, bytes]]]):
    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


def extract(headers: Headers | None) -> Context:
    return _PROPAGATOR.extract(headers or [], getter=_HeaderGetter())


def inject() -> list[tuple[str, bytes]]:
    """Headers carrying the current span's context."""
    headers: list[tuple[str, bytes]] = []
    _PROPAGATOR.inject(headers, setter=_HeaderSetter())
    return headers


@contextmanager
def continued(headers: Headers | None) -> Iterator[None]:
    """Run the body in the trace `headers` carry: what it publishes joins that trace."""
    token = otel_context.attach(extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def trace_key(headers: Headers | None) -> str:
    """What tells a record's trace from another's, read off its `traceparent` header without
    parsing it ("" for none): records with the same key belong to the same trace."""
    for key, value in headers or ():
        if key == "traceparent":
            return value[3:35].decode("latin-1")
    return ""


def trace_id_of(headers: Headers | None) -> str | None:
    """The 32-hex trace id in a record's `traceparent` header, if any."""
    span = trace.get_current_span(extract(headers))
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


@contextmanager
def run_context(run_id: str | None) -> Iterator[None]:
    token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else "-"
        record.run_id = _run_id.get() or "-"
        return True


def setup_logging(service: str, level: str, stream: IO[str] = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {service} %(name)s [run=%(run_id)s trace=%(trace_id)s] %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Kafka clients log every reconnect at INFO/WARNING; keep ours readable.
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class _SpanLines:
    """A span as one line of the JSON `ReadableSpan.to_json` writes, at a fraction of its cost:
    that method serialises the process's resource again for every span, and formats each time
    through `strftime`. The resource is the same for every span of a process, so it is written
    once and spliced in."""

    def __init__(self) -> None:
        self._resource: tuple[Resource, str] | None = None

    def _resource_json(self, resource: Resource) -> str:
        if self._resource is None or self._resource[0] is not resource:
            self._resource = (resource, json.dumps(json.loads(resource.to_json()), separators=(",", ":")))
        return self._resource[1]

    def __call__(self, span: ReadableSpan) -> str:
        ctx, parent = span.context, span.parent
        body = {
            "name": span.name,
            "context": _context(ctx) if ctx else None,
            "kind": str(span.kind),
            "parent_id": f"0x{parent.span_id:016x}" if parent is not None else None,
            "start_time": _iso(span.start_time),
            "end_time": _iso(span.end_time),
            "status": _status(span),
            "attributes": dict(span.attributes) if span.attributes is not None else None,
            "events": [
                {"name": e.name, "timestamp": _iso(e.timestamp), "attributes": _attrs(e.attributes)}
                for e in span.events
            ],
            "links": [
                {"context": _context(link.context), "attributes": _attrs(link.attributes)}
                for link in span.links
            ],
        }
        line = json.dumps(body, separators=(",", ":"), default=str)
        return f'{line[:-1]},"resource":{self._resource_json(span.resource)}}}\n'


def _context(ctx: SpanContext) -> dict[str, str]:
    return {
        "trace_id": f"0x{ctx.trace_id:032x}",
        "span_id": f"0x{ctx.span_id:016x}",
        "trace_state": repr(ctx.trace_state),
    }


def _attrs(attributes: Any) -> dict[str, Any] | None:
    return dict(attributes) if attributes is not None else None


def _status(span: ReadableSpan) -> dict[str, str]:
    status = {"status_code": span.status.status_code.name}
    if span.status.description:
        status["description"] = span.status.description
    return status


def _iso(ns: int | None) -> str | None:
    if not ns:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_second(seconds)}.{rest // 1000:06d}Z"


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def redact_spans(redact: Redactor) -> None:
    """Apply `redact` to every string a span carries (name, status, attributes, events, links)
    before any exporter of this process sees it."""
    _redactors.append(redact)


def _redact(text: str) -> str:
    for redact in _redactors:
        text = redact(text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _redact(value)
    if isinstance(value, (tuple, list)):
        return tuple(_redact_value(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def _redact_attrs(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if attributes is None:
        return None
    return {k: _redact_value(v) for k, v in attributes.items()}


def _redacted(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` with every string redacted, or `span` itself when nothing changed: a copy
    loses the counts of dropped attributes and events, so only a span that held a secret pays that."""
    status = span.status
    if status.description:
        status = Status(status.status_code, _redact(status.description))
    copy = ReadableSpan(
        name=_redact(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_redact_attrs(span.attributes),
        events=[Event(e.name, _redact_attrs(e.attributes), e.timestamp) for e in span.events],
        links=[Link(link.context, _redact_attrs(link.attributes)) for link in span.links],
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
    return span if _same(span, copy) else copy


def _same(span: ReadableSpan, copy: ReadableSpan) -> bool:
    return (
        span.name == copy.name
        and span.status.description == copy.status.description
        and _attrs(span.attributes) == _attrs(copy.attributes)
        and [_attrs(e.attributes) for e in span.events] == [_attrs(e.attributes) for e in copy.events]
        and [_attrs(link.attributes) for link in span.links]
        == [_attrs(link.attributes) for link in copy.links]
    )


class RedactingExporter(SpanExporter):
    """Hands `inner` each span with the registered redactions applied. It wraps the exporter, not
    the span processor, so the redaction runs on the export thread and not on the path of a record."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if _redactors:
            spans = [_redacted(span) for span in spans]
        return self._inner.export(spans)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _FileExporter(ConsoleSpanExporter):
    """Spans as lines of a file it owns, so it closes the file when the provider shuts down."""

    def shutdown(self) -> None:
        self.out.close()


def _exporter(service: str, settings: Settings) -> tuple[SpanExporter, int | None] | None:
    """The exporter `settings` name, with the batch delay it is flushed at (None: the SDK's,
    which OTEL_BSP_SCHEDULE_DELAY sets); None for no exporter."""
    if settings.trace_exporter == "console":
        return ConsoleSpanExporter(), None
    if settings.trace_exporter == "otlp":
        # Imported here: only a process that exports over OTLP pays for protobuf and requests.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        endpoint = f"{settings.otlp_endpoint.rstrip('/')}/v1/traces"
        return OTLPSpanExporter(endpoint=endpoint), None
    if settings.trace_exporter == "file":
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        out = (settings.logs_dir / f"traces-{service}.jsonl").open("a", encoding="utf-8")
        return _FileExporter(out=out, formatter=_SpanLines()), 500
    return None


def setup_tracing(service: str, settings: Settings) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"charter-{service}"}))
    chosen = _exporter(service, settings)
    if chosen is not None:
        exporter, delay_ms = chosen
        provider.add_span_processor(
            BatchSpanProcessor(RedactingExporter(exporter), schedule_delay_millis=delay_ms)
        )
    trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)
