"""The pipeline's failure handling, without a broker: a recording sender stands in for the
producer here only; the end-to-end tests prove the same on the real broker."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from charter import serde
from charter.clock import FixedClock
from charter.config import Settings
from charter.errors import InvalidEvent, RetryPolicy
from charter.events import DeadLettered, Event
from charter.runtime.delivery import Delivery
from charter.runtime.letters import KEPT_PREFIX, LETTER_HEADROOM
from charter.runtime.pipeline import Pipeline
from tests.factories import NOW, one_of_each

EVENT = one_of_each()[0]


class Recorder:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.sent: list[Event] = []

    async def send(self, event: Event) -> asyncio.Future[Any]:
        self.sent.append(event)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _delivery(value: bytes, offset: int = 3) -> Delivery:
    return Delivery("charter.triggers", 1, offset, b"key", value, (), 0)


def _run(
    handler: Any,
    *values: bytes,
    retry: RetryPolicy | None = None,
    settings: Settings | None = None,
    key: bytes = b"key",
) -> list[Event]:
    recorder = Recorder(settings)
    pipeline = Pipeline("planner", recorder, handler, FixedClock(NOW), retry)  # type: ignore[arg-type]
    deliveries = [replace(_delivery(v, i), key=key) for i, v in enumerate(values)]
    asyncio.run(_process(pipeline, deliveries))
    return recorder.sent


async def echo(event: Event, _d: Delivery) -> Sequence[Event]:
    return [event]


def test_outputs_are_published() -> None:
    assert _run(echo, serde.encode(EVENT)) == [EVENT]


def test_garbage_is_dead_lettered_and_the_next_record_still_runs() -> None:
    dead, good = _run(echo, b"garbage", serde.encode(EVENT))
    assert isinstance(dead, DeadLettered)
    assert dead.source_topic == "charter.triggers"
    assert (dead.source_partition, dead.source_offset) == (1, 0)
    assert dead.value == b"garbage"
    assert dead.key == b"key"
    assert "marker" in dead.reason
    assert dead.service == "planner"
    assert good == EVENT


def test_records_the_service_skips_are_not_handled_and_the_rest_are() -> None:
    recorder = Recorder()
    seen: list[Event] = []

    async def handler(event: Event, _d: Delivery) -> Sequence[Event]:
        seen.append(event)
        return [event]

    other = one_of_each()[1]
    skip = serde.event_type(serde.encode(other))
    pipeline = Pipeline(
        "planner",
        recorder,  # type: ignore[arg-type]
        handler,
        FixedClock(NOW),
        skip=lambda d: serde.event_type(d.value) == skip,
    )
    values = [serde.encode(EVENT), serde.encode(other), b"garbage"]
    asyncio.run(_process(pipeline, [_delivery(v, i) for i, v in enumerate(values)]))
    assert seen == [EVENT]
    assert recorder.sent[0] == EVENT
    assert isinstance(recorder.sent[1], DeadLettered)  # bad input is never skipped unseen
    assert len(recorder.sent) == 2


def test_an_event_with_an_empty_id_is_dead_lettered_not_handled() -> None:
    handled: list[Event] = []

    async def handler(event: Event, _d: Delivery) -> Sequence[Event]:
        handled.append(event)
        return []

    for blank in ("", "  "):
        nameless = EVENT.model_copy(
            update={"envelope": EVENT.envelope.model_copy(update={"event_id": blank})}
        )
        [dead] = _run(handler, serde.encode(nameless))
        assert isinstance(dead, DeadLettered)
        assert dead.error_type == "InvalidEvent"
        assert dead.reason == (
            f"{EVENT.envelope.event_type} with correlation id "
            f"{EVENT.envelope.correlation_id!r} has an empty event_id"
        )
    assert handled == []


def test_a_dead_letter_keeps_the_digest_and_size_of_an_original_that_fits() -> None:
    [dead] = _run(echo, b"garbage")
    assert isinstance(dead, DeadLettered)
    assert (dead.value, dead.truncated, dead.original_size) == (b"garbage", False, 7)
    assert dead.digest == "sha256:" + hashlib.sha256(b"garbage").hexdigest()


SMALL = Settings(max_message_bytes=20_000)


def _fits(letter: DeadLettered) -> bool:
    return len(serde.encode(letter)) + len(letter.key or b"") + LETTER_HEADROOM <= SMALL.max_message_bytes


def test_an_original_too_big_for_the_broker_is_kept_as_its_digest_size_and_first_bytes() -> None:
    big = b"\xee" + bytes(range(256)) * 200  # 51,201 bytes of garbage
    [dead] = _run(echo, big, settings=SMALL)
    assert isinstance(dead, DeadLettered)
    assert _fits(dead)
    assert dead.truncated
    assert dead.value == big[:KEPT_PREFIX]
    assert dead.original_size == len(big)
    assert dead.digest == "sha256:" + hashlib.sha256(big).hexdigest()
    assert "not an Avro single-object record" in dead.reason
    assert dead.key == b"key"


def test_a_letter_still_too_big_without_its_original_cuts_its_key_and_reason_too() -> None:
    async def quoting(event: Event, _d: Delivery) -> Sequence[Event]:
        raise InvalidEvent("bad data: " + "x" * 50_000)  # a reason that quotes a huge record

    [dead] = _run(quoting, serde.encode(EVENT), settings=SMALL, key=b"k" * 50_000)
    assert isinstance(dead, DeadLettered)
    assert _fits(dead)
    assert dead.truncated
    assert dead.reason.startswith("bad data: xxx")
    assert len(dead.reason) == len(dead.key or b"") == KEPT_PREFIX
    assert dead.envelope.correlation_id == "charter.triggers:1:0"
    assert dead.original_size == len(serde.encode(EVENT))


def test_the_same_bad_record_gets_the_same_dead_letter_id() -> None:
    assert _run(echo, b"garbage")[0].event_id == _run(echo, b"garbage")[0].event_id


def test_invalid_events_are_dead_lettered_without_retry() -> None:
    calls = 0

    async def refuse(event: Event, _d: Delivery) -> Sequence[Event]:
        nonlocal calls
        calls += 1
        raise InvalidEvent("no such run")

    [dead] = _run(refuse, serde.encode(EVENT))
    assert isinstance(dead, DeadLettered)
    assert dead.reason == "no such run"
    assert dead.envelope.correlation_id == EVENT.envelope.correlation_id
    assert calls == 1


def test_transient_failures_are_retried_then_succeed() -> None:
    calls = 0

    async def flaky(event: Event, _d: Delivery) -> Sequence[Event]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OSError("database is locked")
        return [event]

    assert _run(flaky, serde.encode(EVENT), retry=RetryPolicy(attempts=5, first_delay_s=0.001)) == [EVENT]
    assert calls == 3


def test_persistent_failures_are_dead_lettered_after_the_last_attempt() -> None:
    async def broken(event: Event, _d: Delivery) -> Sequence[Event]:
        raise OSError("disk gone")

    [dead] = _run(broken, serde.encode(EVENT), retry=RetryPolicy(attempts=3, first_delay_s=0.001))
    assert isinstance(dead, DeadLettered)
    assert dead.reason.startswith("gave up after 3 attempts")
    assert dead.error_type == "OSError"


def test_retry_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy(attempts=10, first_delay_s=0.1, multiplier=2, max_delay_s=0.5)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]


async def _process(pipeline: Pipeline, deliveries: list[Delivery]) -> None:
    await pipeline.publish(await pipeline.prepare_batch(deliveries))
