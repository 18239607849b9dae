"""Bad records on the real broker land in the topic's DLQ with the reason; the next one runs."""

from __future__ import annotations

import pytest

from charter import serde, topics
from charter.events import DeadLettered, RunCompleted
from tests.e2e.conftest import Stack, produce_raw, run_id, wait_for, wait_run_end
from tests.factories import one_of_each

pytestmark = pytest.mark.e2e


def _dead_letter(stack: Stack, key: bytes) -> DeadLettered:
    found = wait_for(stack, lambda e: isinstance(e, DeadLettered) and e.key == key, "triggers.dlq")
    assert isinstance(found, DeadLettered)
    return found


def test_a_malformed_trigger_is_dead_lettered_and_the_next_event_still_runs(stack: Stack) -> None:
    produce_raw(stack, b'{"order_id": "X-1", "amount": 5}', b"malformed-1")
    dead = _dead_letter(stack, b"malformed-1")
    assert dead.value == b'{"order_id": "X-1", "amount": 5}'
    assert "not an Avro single-object record" in dead.reason
    assert dead.service == "planner"
    assert dead.source_topic == topics.name(stack.settings, topics.Topic.TRIGGERS)
    trigger = stack.publish("support.refund_requested", {"order_id": "D-1001", "amount": 20})
    assert isinstance(wait_run_end(stack, run_id(trigger, "support-refunds")), RunCompleted)


def test_an_unknown_schema_is_dead_lettered_with_its_fingerprint(stack: Stack) -> None:
    produce_raw(stack, b"\xc3\x01" + b"\xee" * 8 + b"\x02\x04", b"unknown-schema-1")
    dead = _dead_letter(stack, b"unknown-schema-1")
    assert "unknown schema fingerprint eeeeeeeeeeeeeeee" in dead.reason


def test_a_truncated_event_is_dead_lettered(stack: Stack) -> None:
    good = serde.encode(one_of_each()[0])
    produce_raw(stack, good[:-4], b"truncated-1")
    assert "does not decode" in _dead_letter(stack, b"truncated-1").reason
