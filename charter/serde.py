"""Events to bytes and back: Avro, framed with the Avro single-object encoding.

Every value is `C3 01` + the writer schema's 8-byte CRC-64-AVRO fingerprint (little-endian) +
the Avro binary body, so any Avro reader with the `.avsc` files can find the writer's schema.
This is the only module that touches fastavro; services see `encode` and `decode`.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import expand_schema, fingerprint, parse_schema, to_parsing_canonical_form

from charter.errors import InvalidMessage, UndecodableRecord, UnknownSchema
from charter.events import EVENT_TYPES, Event

MARKER = b"\xc3\x01"
_HEADER_LEN = len(MARKER) + 8
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"


@dataclass(frozen=True)
class WriterSchema:
    name: str
    parsed: Any
    fingerprint: bytes
    canonical: str
    # False for a version kept only so that events it wrote can still be read.
    current: bool = True


def standalone(schema: Any, named: dict[str, Any]) -> Any:
    """`schema` with the named types it uses (`named`, as fastavro parsed them) written in, and
    without fastavro's bookkeeping keys: one document another Avro library can read."""
    return _written(expand_schema(parse_schema(schema, named_schemas=dict(named))))


def _written(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _written(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_written(v) for v in value]
    return value


def _fingerprint(parsed: Any) -> tuple[bytes, str]:
    # The fingerprint is of the whole schema, named types written out where first used, as
    # every Avro implementation computes it; not of the bare reference "charter.Envelope".
    canonical = to_parsing_canonical_form(expand_schema(parsed))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")), canonical


class SchemaSet:
    """The `.avsc` files of one directory: named types in `types/`, one event type per file,
    and in `versions/` every earlier version of each, whole, named `<Name>.<fingerprint>.avsc`
    (scripts/schema_versions.py writes them), read through the current one."""

    def __init__(self, directory: Path) -> None:
        named: dict[str, Any] = {}
        for path in sorted((directory / "types").glob("*.avsc")):
            parse_schema(json.loads(path.read_text()), named_schemas=named)
        self.by_name: dict[str, WriterSchema] = {}
        self.by_fingerprint: dict[bytes, WriterSchema] = {}
        for path in sorted(directory.glob("*.avsc")):
            parsed = parse_schema(json.loads(path.read_text()), named_schemas=dict(named))
            fp, canonical = _fingerprint(parsed)
            schema = WriterSchema(name=path.stem, parsed=parsed, fingerprint=fp, canonical=canonical)
            self.by_name[schema.name] = schema
            self.by_fingerprint[schema.fingerprint] = schema
        for path in sorted((directory / "versions").glob("*.avsc")):
            name, _, _ = path.name.partition(".")
            if name not in self.by_name:
                continue  # an event type no longer written or read
            parsed = parse_schema(json.loads(path.read_text()))
            fp, canonical = _fingerprint(parsed)
            self.by_fingerprint.setdefault(fp, WriterSchema(name, parsed, fp, canonical, current=False))


@cache
def schemas(directory: Path = SCHEMAS_DIR) -> SchemaSet:
    return SchemaSet(directory)


# The bytes of events encoded or decoded lately, by object: a service encodes the same event
# for its inbox and again to send it, and re-encodes events it stored (a run keeps its
# trigger). Events are frozen, so an event's bytes never change; the entry holds the event
# itself, so its id cannot be reused by another object while the entry lives. Large records
# are not kept, and the whole is bounded in bytes as well as in entries.
# (An OrderedDict: evicting the oldest from a plain dict, `next(iter(d))`, slows as deleted
# slots pile up at its front.)
_RECENT: OrderedDict[int, tuple[Event, bytes]] = OrderedDict()
_RECENT_MAX = 4096
_RECENT_MAX_BYTES = 16 * 1024 * 1024
_RECENT_LARGEST = 64 * 1024
_recent_bytes = 0


def _remember(event: Event, data: bytes) -> None:
    global _recent_bytes  # noqa: PLW0603 (the one figure the memory's bound needs)
    if len(data) > _RECENT_LARGEST:
        return
    known = _RECENT.pop(id(event), None)
    if known is not None:
        _recent_bytes -= len(known[1])
    while _RECENT and (len(_RECENT) >= _RECENT_MAX or _recent_bytes + len(data) > _RECENT_MAX_BYTES):
        _recent_bytes -= len(_RECENT.popitem(last=False)[1][1])
    _RECENT[id(event)] = (event, data)
    _recent_bytes += len(data)


def encode(event: Event) -> bytes:
    recent = _RECENT.get(id(event))
    if recent is not None and recent[0] is event:
        return recent[1]
    schema = schemas().by_name[type(event).__name__]
    buffer = io.BytesIO()
    buffer.write(MARKER)
    buffer.write(schema.fingerprint)
    fastavro.schemaless_writer(buffer, schema.parsed, event.model_dump())
    data = buffer.getvalue()
    _remember(event, data)
    return data


def writer_schema(data: bytes) -> WriterSchema:
    """The schema that wrote `data`, from its single-object header."""
    if len(data) < _HEADER_LEN or data[: len(MARKER)] != MARKER:
        raise UndecodableRecord("not an Avro single-object record (missing C3 01 marker)")
    fp = bytes(data[len(MARKER) : _HEADER_LEN])
    schema = schemas().by_fingerprint.get(fp)
    if schema is None:
        raise UnknownSchema(f"unknown schema fingerprint {fp.hex()}")
    return schema


def event_type(data: bytes) -> str | None:
    """The event type a record holds, from its header alone; None if it has no known header
    (decoding it says why)."""
    try:
        return writer_schema(data).name
    except InvalidMessage:
        return None


def decode(data: bytes, *, remember: bool = False) -> Event:
    """The event `data` holds. `remember`: keep `data` as what encoding the event gives, for
    bytes Charter encoded itself and stored (a run's trigger, an inbox's outputs, an outcome),
    which are then sent or stored again. Not for bytes off a topic: another producer may have
    written the same event differently (JSON fields are canonical only as Charter writes them)."""
    schema = writer_schema(data)
    body = io.BytesIO(data[_HEADER_LEN:])
    try:
        # An older writer's record is resolved into the current schema (defaults filled in).
        reader = None if schema.current else schemas().by_name[schema.name].parsed
        record = fastavro.schemaless_reader(body, schema.parsed, reader)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise UndecodableRecord(f"{schema.name} body does not decode: {exc}") from exc
    if body.tell() != len(data) - _HEADER_LEN:
        raise UndecodableRecord(
            f"{schema.name} body has {len(data) - _HEADER_LEN - body.tell()} trailing bytes"
        )
    cls = EVENT_TYPES[schema.name]
    try:
        event = cls.model_validate(record)
    except ValueError as exc:
        raise UndecodableRecord(f"{schema.name} fails validation: {_first_line(exc)}") from exc
    if event.envelope.event_type != schema.name:
        raise UndecodableRecord(
            f"envelope says {event.envelope.event_type!r} but the schema is {schema.name}"
        )
    if remember and schema.current:  # an older writer's bytes are not what encoding it now gives
        _remember(event, bytes(data))
    return event


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
