from __future__ import annotations

import base64
import json

import pytest

from charter import serde
from charter.errors import UndecodableRecord, UnknownSchema
from charter.events import EVENT_TYPES, DeadLettered, TriggerReceived
from services.audit.views import as_json
from tests.factories import one_of_each


def test_the_factory_covers_every_event_type() -> None:
    assert {type(e).__name__ for e in one_of_each()} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).__name__)
def test_round_trip_is_exact(event: object) -> None:
    data = serde.encode(event)  # type: ignore[arg-type]
    assert data[:2] == b"\xc3\x01"
    assert serde.decode(data) == event
    # Encoding is deterministic: a redelivered output is byte-identical. (A copy: the event just
    # decoded would be answered from the encoder's memory of recent events.)
    assert serde.encode(serde.decode(data).model_copy()) == data


def test_an_event_encoded_again_gives_the_same_bytes_without_encoding() -> None:
    event = one_of_each()[1]
    data = serde.encode(event)
    assert serde.encode(event) is data
    decoded = serde.decode(data)
    assert serde.encode(decoded) == data
    # Bytes off a topic are not taken as the encoding (another producer may write differently);
    # bytes Charter stored itself are.
    assert serde.encode(serde.decode(data)) is not data
    assert serde.encode(serde.decode(data, remember=True)) is data
    # Equal is not the same: another object with equal fields is encoded afresh, to equal bytes.
    copy = event.model_copy()
    assert serde.encode(copy) == data
    assert serde.encode(copy) is not data


def test_header_names_the_writer_schema() -> None:
    event = one_of_each()[0]
    data = serde.encode(event)
    assert serde.writer_schema(data).name == "TriggerReceived"


def test_json_fields_are_canonical_on_the_wire() -> None:
    event = next(e for e in one_of_each() if isinstance(e, TriggerReceived))
    assert event.model_dump()["data"] == '{"amount":250.5,"order_id":"A-1001"}'


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (b"", UndecodableRecord, "marker"),
        (b'{"json": true}', UndecodableRecord, "marker"),
        (b"\xc3\x01" + b"\x00" * 8 + b"body", UnknownSchema, "unknown schema fingerprint"),
    ],
)
def test_bad_bytes_are_named(data: bytes, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        serde.decode(data)


def test_truncated_body_is_undecodable() -> None:
    data = serde.encode(one_of_each()[0])
    with pytest.raises(UndecodableRecord, match="does not decode"):
        serde.decode(data[:-5])


def test_trailing_bytes_are_undecodable() -> None:
    data = serde.encode(one_of_each()[0])
    with pytest.raises(UndecodableRecord, match="trailing"):
        serde.decode(data + b"\x00")


def test_envelope_type_must_match_the_schema() -> None:
    event = one_of_each()[0]
    lying = event.model_copy(
        update={"envelope": event.envelope.model_copy(update={"event_type": "RunStarted"})}
    )
    with pytest.raises(UndecodableRecord, match="envelope says"):
        serde.decode(serde.encode(lying))


def test_json_field_that_is_not_an_object_is_undecodable() -> None:
    event = one_of_each()[0]
    data = serde.encode(event)
    # A same-length replacement inside the Avro string keeps the framing valid.
    original = b'{"amount":250.5,"order_id":"A-1001"}'
    bad = data.replace(original, b"[" + b" " * (len(original) - 2) + b"]")
    assert bad != data
    with pytest.raises(UndecodableRecord, match="fails validation"):
        serde.decode(bad)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).__name__)
def test_every_event_shows_as_json_for_the_api_and_the_cli(event: object) -> None:
    """A dead letter's bytes are rarely UTF-8; they show as base64, JSON fields as objects."""
    shown = as_json(event)  # type: ignore[arg-type]
    json.dumps(shown)
    if isinstance(event, DeadLettered):
        assert shown["value"] == base64.b64encode(event.value).decode()
    if isinstance(event, TriggerReceived):
        assert shown["data"] == event.data


def test_the_event_type_is_read_from_the_header_alone() -> None:
    event = one_of_each()[0]
    data = serde.encode(event)
    assert serde.event_type(data) == "TriggerReceived"
    assert serde.event_type(data[:10] + b"not the body") == "TriggerReceived"
    assert serde.event_type(b"\xc3\x01" + b"\x00" * 8 + b"x") is None  # unknown fingerprint
    assert serde.event_type(b"{}") is None
