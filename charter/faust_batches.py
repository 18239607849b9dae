"""Batches from a faust stream as soon as records wait, with no timer.

faust's `Stream.take_events(max_, within)` waits for a full buffer or `within` seconds, in a
loop that wakes every `within` even when nothing arrives: at the 1 ms a handler can afford on
the hot path, that is a thousand wake-ups a second and about a seventh of a core with no load.
This take waits on an event instead. The stream's passive drainer appends each record and wakes
the consumer, which takes whatever the buffer holds when it runs. So an idle stream costs
nothing, a lone record is handled at once, and under load the batches grow to what arrived
while the last one was being handled (at most `max_`).

Like `take_events`, it turns the stream's automatic acks off and acks each record only once the
batch that holds it has been handled, so faust commits no offset of a record not yet handled;
unlike it, a batch whose handling raised is not acked at all (the worker stops, and the records
come again). It uses the same stream hooks as `take_events` (faust-streaming is pinned in
pyproject.toml).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


async def take_ready(stream: Any, max_: int) -> AsyncIterator[list[Any]]:
    """Yield lists of up to `max_` events: whatever has arrived, as soon as anything has."""
    events: list[Any] = []
    arrived = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def add_to_buffer(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("faust handed a value with no current event")
        events.append(event)
        arrived.set()
        if len(events) >= max_:
            # Backpressure: the drainer (and so the fetch) waits until the batch is taken.
            room.clear()
            await stream.wait(room)
        return value

    acks = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not arrived.is_set():
                await stream.wait_for_stopped(arrived)  # records, or the stream stopping
            if not events:
                break  # woken with nothing: the stream stopped (or crashed)
            batch = events[:max_]
            del events[: len(batch)]
            if not events:
                arrived.clear()
            room.set()
            yield batch
            for event in batch:
                await stream.ack(event)
    finally:
        stream.enable_acks = acks
        stream._processors.remove(add_to_buffer)
