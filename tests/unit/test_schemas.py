"""The Avro schemas are the wire contract; the pydantic models must match them field for field."""

from __future__ import annotations

import json
import types
import typing
from datetime import datetime
from typing import Any

import fastavro
import pytest
from pydantic import BaseModel

from charter import serde
from charter.events import EVENT_TYPES, Event
from tests.conftest import REPO

SCHEMAS = REPO / "schemas"


def _named_types() -> dict[str, dict[str, Any]]:
    return {f"charter.{p.stem}": json.loads(p.read_text()) for p in (SCHEMAS / "types").glob("*.avsc")}


def _avro_of(annotation: Any, metadata: list[Any]) -> Any:
    """The Avro type a model field's annotation stands for."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        # JsonObject: a dict in Python, a JSON string on the wire.
        return "string"
    if origin in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return ["null", _avro_of(members[0], [])]
    if origin is list:
        return {"type": "array", "items": _avro_of(typing.get_args(annotation)[0], [])}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"charter.{annotation.__name__}"
    simple = {str: "string", int: "int|long", float: "double", bool: "boolean", bytes: "bytes"}
    if annotation is datetime:
        return {"type": "long", "logicalType": "timestamp-micros"}
    return simple[annotation]


def _same(expected: Any, actual: Any) -> bool:
    if expected == "int|long":
        return actual in ("int", "long")
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            _same(e, a) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, dict) and isinstance(actual, dict):
        return all(_same(v, actual.get(k)) for k, v in expected.items())
    return bool(expected == actual)


def _check_record(model: type[BaseModel], schema: dict[str, Any]) -> None:
    hints = typing.get_type_hints(model, include_extras=True)
    model_fields = list(model.model_fields)
    avro_fields = [f["name"] for f in schema["fields"]]
    assert model_fields == avro_fields, f"{model.__name__}: field names or order differ"
    for field in schema["fields"]:
        expected = _avro_of(hints[field["name"]], [])
        assert _same(expected, field["type"]), (
            f"{model.__name__}.{field['name']}: {expected} vs {field['type']}"
        )
        optional = model.model_fields[field["name"]].is_required() is False
        assert optional == ("default" in field), f"{model.__name__}.{field['name']}: default differs"


def test_every_event_type_has_exactly_one_schema() -> None:
    assert {p.stem for p in SCHEMAS.glob("*.avsc")} == set(EVENT_TYPES)


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_event_model_matches_its_schema(name: str) -> None:
    _check_record(EVENT_TYPES[name], json.loads((SCHEMAS / f"{name}.avsc").read_text()))


def test_named_types_match_their_models() -> None:
    from charter import events

    for fullname, schema in _named_types().items():
        model = getattr(events, fullname.removeprefix("charter."))
        _check_record(model, schema)


def test_every_event_carries_the_envelope_first() -> None:
    for name in EVENT_TYPES:
        schema = json.loads((SCHEMAS / f"{name}.avsc").read_text())
        assert schema["fields"][0] == {"name": "envelope", "type": "charter.Envelope"}
        assert issubclass(EVENT_TYPES[name], Event)


def _rabin_fingerprint(data: bytes) -> int:
    """CRC-64-AVRO as the Avro specification writes it, independently of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp & 0xFFFFFFFFFFFFFFFF)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_spec_fingerprint_of_null_schema() -> None:
    # The value the Avro specification's reference implementation gives for "null".
    assert _rabin_fingerprint(b'"null"') == 7195948357588979594


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_the_canonical_form_stands_alone(name: str) -> None:
    """The fingerprint is of the whole schema, with its named types written out where first
    used (as Java's SchemaNormalization does), not of a bare reference to charter.Envelope."""
    canonical = serde.schemas().by_name[name].canonical
    assert '"type":"charter.Envelope"' not in canonical
    assert '{"name":"charter.Envelope","type":"record"' in canonical
    fastavro.parse_schema(json.loads(canonical))  # no named types needed: it is self-contained


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_fingerprint_is_the_spec_value_little_endian(name: str) -> None:
    schema = serde.schemas().by_name[name]
    expected = _rabin_fingerprint(schema.canonical.encode()).to_bytes(8, "little")
    assert schema.fingerprint == expected
