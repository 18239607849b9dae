"""Bad records on the real broker land in the topic's DLQ with the reason; the next one runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from charter import broker, serde, topics
from charter.events import DeadLettered, RunCompleted
from tests.e2e.conftest import Stack, produce_nameless, produce_raw, run_id, wait_for, wait_run_end
from tests.factories import one_of_each

pytestmark = pytest.mark.e2e


def _dead_letter(stack: Stack, key: bytes) -> DeadLettered:
    found = wait_for(
        stack,
        lambda e: isinstance(e, DeadLettered) and e.key == key and e.service == "planner",
        "triggers.dlq",
    )
    assert isinstance(found, DeadLettered)
    return found


def _listed(stack: Stack, letter: DeadLettered) -> dict[str, Any]:
    """The letter as `charter dlq list --json` gives it."""
    out = stack.cli("dlq", "list", "triggers", "--json", "--limit", "100000").stdout
    listed: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    [mine] = [x for x in listed if x["id"] == letter.event_id]
    return mine


def _listed_row(stack: Stack, letter: DeadLettered) -> str:
    """The letter's row in `charter dlq list`'s table."""
    out = stack.cli("dlq", "list", "triggers", "--limit", "100000").stdout
    [row] = [line for line in out.splitlines() if line.startswith(letter.event_id[:8])]
    return row


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


def test_a_trigger_a_filter_cannot_evaluate_is_dead_lettered_and_the_publisher_is_told(stack: Stack) -> None:
    published = stack.cli(
        "publish", "support.refund_requested", "--data", json.dumps({"order_id": "W-1", "amount": "five"})
    )
    assert published.returncode == 0
    assert "no agent will run: the planner will dead-letter it to" in published.stdout
    trigger_id = published.stdout.split("as event ")[1].split()[0]
    dead = _dead_letter(stack, trigger_id.encode())
    listed = _listed(stack, dead)
    assert listed["error_type"] == "InvalidEvent"
    assert listed["reason"] == (
        "agent support-refunds: filter 'trigger.amount > 0' cannot be evaluated: "
        "'>' not supported between instances of 'str' and 'int'"
    )
    assert listed["causation_id"] == trigger_id
    assert "agent support-refunds: filter 'trigger.amount > 0'" in _listed_row(stack, dead)


def test_a_trigger_with_an_empty_id_is_dead_lettered(stack: Stack) -> None:
    produce_nameless(stack, "empty-id-1")
    listed = _listed(stack, _dead_letter(stack, b"empty-id-1"))
    assert (listed["error_type"], listed["key"]) == ("InvalidEvent", "empty-id-1")
    assert listed["reason"] == "TriggerReceived with correlation id 'empty-id-1' has an empty event_id"


GARBAGE = b"not avro " * 133_334  # 1.2 MB


def _produce_big(stack: Stack, value: bytes, key: bytes) -> None:
    """Put a record bigger than Charter's own producers may send on the triggers topic, as a
    foreign producer with a higher limit would. Compressed, so that Apache Kafka's own limit on
    a batch (about 1 MB) lets it in too."""

    async def go() -> None:
        kwargs = broker.producer_kwargs(stack.settings) | {"max_request_size": 4 * len(value)}
        producer = AIOKafkaProducer(compression_type="gzip", **kwargs)
        await producer.start()
        try:
            await producer.send_and_wait(topics.name(stack.settings, topics.Topic.TRIGGERS), value, key=key)
        finally:
            await producer.stop()

    asyncio.run(go())


def test_a_record_too_big_to_dead_letter_whole_is_kept_as_its_digest_size_and_first_bytes(
    stack: Stack,
) -> None:
    assert len(GARBAGE) > stack.settings.max_message_bytes
    _produce_big(stack, GARBAGE, b"too-big-1")
    dead = _dead_letter(stack, b"too-big-1")
    listed = _listed(stack, dead)
    assert "not an Avro single-object record" in listed["reason"]
    assert listed["truncated"] is True
    assert listed["original_size"] == len(GARBAGE)
    assert listed["digest"] == "sha256:" + hashlib.sha256(GARBAGE).hexdigest()
    assert dead.value == GARBAGE[: len(dead.value)]
    row = _listed_row(stack, dead)
    assert f"[original not kept: {len(GARBAGE)} bytes, sha256:" in row
    refused = stack.cli("dlq", "replay", dead.event_id, "--yes", check=False)
    assert refused.returncode == 2
    assert f"kept only the first {len(dead.value)} of the original's {len(GARBAGE)} bytes" in refused.stderr
    # The service went on: the next trigger runs.
    trigger = stack.publish("support.refund_requested", {"order_id": "D-1002", "amount": 20})
    assert isinstance(wait_run_end(stack, run_id(trigger, "support-refunds")), RunCompleted)


def test_publishing_says_which_agents_an_event_starts_and_plainly_when_none(stack: Stack) -> None:
    good = stack.cli("publish", "support.refund_requested", "--data", '{"order_id": "P-1001", "amount": 20}')
    trigger_id = good.stdout.split("as event ")[1].split()[0]
    run = run_id(trigger_id, "support-refunds")
    assert f"starts: support-refunds (run {run})" in good.stdout
    assert isinstance(wait_run_end(stack, run), RunCompleted)
    misspelled = stack.cli("publish", "suport.ticket", "--data", "{}")
    assert misspelled.returncode == 0
    assert 'no agent is triggered by "suport.ticket" — nothing will run' in misspelled.stdout

    headers = {"Authorization": f"Bearer {stack.token('sam')}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as api:
        sent = api.post(
            "/v1/events",
            json={"name": "support.refund_requested", "data": {"order_id": "P-1002", "amount": 5}},
        )
        assert sent.status_code == 202, sent.text
        body = sent.json()
        assert body["starts"] == [
            {"agent": "support-refunds", "run_id": run_id(body["event_id"], "support-refunds")}
        ]
        assert body["note"].startswith("starts: support-refunds (run ")
        nothing = api.post("/v1/events", json={"name": "suport.ticket", "data": {}}).json()
        assert (nothing["starts"], nothing["unevaluable"]) == ([], [])
        assert nothing["note"] == 'no agent is triggered by "suport.ticket" — nothing will run'
        wrong = api.post(
            "/v1/events", json={"name": "support.refund_requested", "data": {"amount": "five"}}
        ).json()
        assert wrong["starts"] == []
        assert wrong["unevaluable"] == [
            "agent support-refunds: filter 'trigger.amount > 0' cannot be evaluated: "
            "'>' not supported between instances of 'str' and 'int'"
        ]
