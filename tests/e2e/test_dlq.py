"""`charter dlq`: an operator finds a dead letter, reads it, and puts a corrected event back."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from charter import topics
from charter.bus import REPLAYED_FROM
from charter.cli import exits
from charter.client import Client
from charter.clock import new_id
from charter.events import DeadLettered, Event, RunCompleted
from tests.e2e.conftest import Stack, in_thread, produce_raw, run_id, wait_for, wait_run_end

pytestmark = pytest.mark.e2e


def _dead_letters(stack: Stack, key: bytes, count: int = 1) -> list[DeadLettered]:
    """The first `count` dead letters of records with this key, oldest first."""
    found: list[DeadLettered] = []

    def more(event: Event) -> bool:
        if isinstance(event, DeadLettered) and event.key == key and event not in found:
            found.append(event)
        return len(found) == count

    wait_for(stack, more, "triggers.dlq")
    return found


def _replayed_from(stack: Stack, position: str) -> list[tuple[int, int]]:
    """Where on `triggers` the records replayed from this DLQ position are (partition, offset)."""

    async def go() -> list[tuple[int, int]]:
        async with Client(stack.settings) as client:
            return [
                (r.partition, r.offset)
                async for r in client.replay("triggers")
                if (REPLAYED_FROM, position.encode()) in r.headers
            ]

    return in_thread(go)


def _trigger(event_id: str, order_id: str, tenant: str) -> dict[str, object]:
    """A trigger as `dlq show --json` prints an event: data as an object."""
    return {
        "envelope": {
            "event_id": event_id,
            "event_type": "TriggerReceived",
            "schema_version": 1,
            "occurred_at": "2026-11-22T12:00:00Z",
            "tenant": tenant,
            "correlation_id": event_id,
        },
        "name": "support.refund_requested",
        "data": {"order_id": order_id, "amount": 20},
        "source": "operator",
    }


def test_a_dead_letter_is_listed_shown_and_replayed_corrected(stack: Stack, tmp_path: Path) -> None:
    key = f"dlq-{uuid.uuid4().hex[:8]}".encode()
    poison = b'{"order_id": "D-7001", "amount": 20}'
    produce_raw(stack, poison, key)
    [dead] = _dead_letters(stack, key)
    dlq_topic = topics.dlq_name(topics.name(stack.settings, topics.Topic.TRIGGERS))

    listed = [json.loads(line) for line in stack.cli("dlq", "list", "--json").stdout.splitlines()]
    [mine] = [x for x in listed if x["id"] == dead.event_id]
    assert mine["dlq_topic"] == dlq_topic
    assert (mine["source_topic"], mine["source_offset"]) == (dead.source_topic, dead.source_offset)
    assert (mine["service"], mine["error_type"], mine["key"]) == (
        "planner",
        "UndecodableRecord",
        key.decode(),
    )
    assert "not an Avro single-object record" in mine["reason"]
    position = f"{dlq_topic}:{mine['dlq_partition']}:{mine['dlq_offset']}"

    shown = stack.cli("dlq", "show", dead.event_id[:8]).stdout
    assert f"dead letter {dead.event_id} at {position}" in shown
    assert "does not decode: not an Avro single-object record" in shown
    assert base64.b64encode(poison).decode() in shown
    assert key.decode() in shown

    unknown = stack.cli("dlq", "show", "ffffffff-no", check=False)
    assert unknown.returncode == exits.NOT_FOUND
    assert "no dead letter with an id starting 'ffffffff-no'" in unknown.stderr

    # A bad fix is refused and nothing is published.
    bad = tmp_path / "bad.json"
    broken = _trigger(new_id(), "D-7001", stack.settings.tenant)
    del broken["name"]
    bad.write_text(json.dumps(broken))
    refused = stack.cli("dlq", "replay", dead.event_id, "--event", str(bad), "--yes", check=False)
    assert refused.returncode == 2, refused.stdout
    assert "the corrected TriggerReceived is not valid: name: Field required" in refused.stderr
    assert _replayed_from(stack, position) == []

    # The corrected trigger runs to completion.
    fixed = tmp_path / "fixed.json"
    trigger_id = new_id()
    fixed.write_text(json.dumps(_trigger(trigger_id, "D-7001", stack.settings.tenant)))
    out = stack.cli("dlq", "replay", dead.event_id[:8], "--event", str(fixed), "--yes").stdout
    assert f"published TriggerReceived {trigger_id}" in out
    assert f"{REPLAYED_FROM}: {position}" in out
    assert isinstance(wait_run_end(stack, run_id(trigger_id, "support-refunds")), RunCompleted)

    # The original, replayed as it was, is dead-lettered again from where it was put back.
    stack.cli("dlq", "replay", dead.event_id, "--yes")
    replays = _replayed_from(stack, position)
    assert len(replays) == 2
    again = _dead_letters(stack, key, count=2)[1]
    assert again.event_id != dead.event_id
    assert (again.source_partition, again.source_offset) in replays
    assert again.value == poison
