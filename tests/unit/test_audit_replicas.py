"""Audit replicas sharing one store, on SQLite and on PostgreSQL (issues 19 and 20): heads are
signed and published only in growing size, whichever replica's view is behind, and a head signed
and left unpublished goes out on the timer with no record after it. Interleavings are made with
barriers between threads, one replica in each, never with sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Connection, Engine

from charter import signing
from charter.bus import Bus
from charter.clock import FixedClock
from charter.config import Settings
from charter.events import CheckpointSigned, Event
from charter.runtime.delivery import Delivery
from services.audit import decide, store
from services.audit.service import Auditor

WAIT_S = 30  # a bound on each barrier, so a broken interleaving fails instead of hanging


class Topic:
    """audit.checkpoints as a monitor reads it: every head published, in order, by any replica."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def publish(self, *events: Event) -> None:
        for event in events:
            assert isinstance(event, CheckpointSigned)
            self.sizes.append(event.size)


class Held:
    """A replica's way to the topic that stops in its first send until released."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.sending = threading.Event()
        self.release = threading.Event()

    async def publish(self, *events: Event) -> None:
        self.sending.set()
        assert self.release.wait(WAIT_S)
        await self.topic.publish(*events)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    signing.ensure_keys(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def replica(engine: Engine, keys: Path, tmp_path: Path, clock: FixedClock) -> Callable[..., Auditor]:
    """A replica of the audit on the shared store: a head every 100 records or 5 s."""
    store.create(engine)
    settings = Settings(home=tmp_path, keys_dir=keys, audit_checkpoint_every=100, audit_checkpoint_seconds=5)

    def make(bus: Topic | Held | None) -> Auditor:
        return Auditor(
            engine, settings, signing.Signer.load(keys, "audit"), cast(Bus | None, bus), clock=clock
        )

    return make


def _records(first: int, count: int) -> list[Delivery]:
    return [Delivery("charter.x", 0, n, b"k", b"raw %d" % n, (), 0) for n in range(first, first + count)]


def _stored(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [h.size for h in store.checkpoints(conn)]


@pytest.fixture
def paused_size(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """The log's size, read by the first reader in another thread, which then waits until told
    to go on: a replica's pass that read the log just before another replica appended to it."""
    read, go = threading.Event(), threading.Event()
    main = threading.main_thread()
    size = store.size

    def pausing(conn: Connection) -> int:
        n = size(conn)
        if threading.current_thread() is not main and not read.is_set():
            read.set()
            assert go.wait(WAIT_S)
        return n

    monkeypatch.setattr(store, "size", pausing)
    yield read, go
    go.set()


def test_a_head_no_larger_than_the_newest_stored_is_never_due() -> None:
    cadence = decide.Cadence(every=100, every_s=5.0)
    # Another replica's head covers more than this view of the log, long ago or not.
    assert not decide.checkpoint_due(3, 4, 0, 99_000_000, cadence)
    assert not decide.checkpoint_due(4, 4, 0, 99_000_000, cadence)
    assert decide.checkpoint_due(5, 4, 0, 99_000_000, cadence)


def test_only_heads_larger_than_the_last_published_go_out_smallest_first() -> None:
    assert decide.to_publish([9, 3, 7, 5], 5) == [7, 9]
    assert decide.to_publish([4, 4], 0) == [4]
    assert decide.to_publish([3], 5) == []


def test_a_replica_whose_view_is_behind_signs_no_head_below_the_newest(
    replica: Callable[..., Auditor],
    engine: Engine,
    clock: FixedClock,
    paused_size: tuple[threading.Event, threading.Event],
) -> None:
    topic = Topic()
    a, b = replica(topic), replica(topic)
    asyncio.run(a.handle_batch(_records(0, 2)))  # the first head, 2
    asyncio.run(b.tick())  # b knows of head 2
    asyncio.run(a.handle_batch(_records(2, 1)))  # 3 records, too soon for a head
    clock.advance(10)
    read, go = paused_size
    behind = threading.Thread(target=lambda: asyncio.run(b.tick()))
    behind.start()
    try:
        assert read.wait(WAIT_S)  # b's timer has read a log of 3...
        asyncio.run(a.handle_batch(_records(3, 1)))  # ...and a signs and publishes 4 meanwhile
    finally:
        go.set()
        behind.join(WAIT_S)
    assert not behind.is_alive()
    # b's head of 3 would have followed 4 on the topic: the log seen to shrink.
    assert _stored(engine) == [2, 4]
    assert topic.sizes == [2, 4]


def test_heads_go_out_one_replica_at_a_time_in_growing_size(
    replica: Callable[..., Auditor], engine: Engine, clock: FixedClock
) -> None:
    topic = Topic()
    held = Held(topic)
    a, b = replica(held), replica(topic)
    first = threading.Thread(target=lambda: asyncio.run(a.handle_batch(_records(0, 2))))
    first.start()
    try:
        assert held.sending.wait(WAIT_S)  # a is sending its head of 2...
        clock.advance(10)
        asyncio.run(b.handle_batch(_records(2, 2)))  # ...while b signs 4
        assert topic.sizes == []  # b sent nothing ahead of a's smaller head
    finally:
        held.release.set()
        first.join(WAIT_S)
    assert not first.is_alive()
    assert topic.sizes == [2]
    # No record comes after b's head: the timer sends it.
    asyncio.run(b.tick())
    assert topic.sizes == [2, 4]
    assert _stored(engine) == [2, 4]


def test_a_head_another_replica_signed_and_left_unpublished_goes_out_on_the_timer(
    replica: Callable[..., Auditor], engine: Engine, clock: FixedClock
) -> None:
    topic = Topic()
    a = replica(topic)
    crashed = replica(None)  # signs, then never publishes
    asyncio.run(a.handle_batch(_records(0, 2)))
    clock.advance(10)
    asyncio.run(crashed.handle_batch(_records(2, 2)))
    assert topic.sizes == [2]
    asyncio.run(a.tick())  # a signed nothing since it last published, and no record comes
    assert topic.sizes == [2, 4]
    with engine.connect() as conn:
        assert store.published_sizes(conn) == {2, 4}
    assert all(x < y for x, y in pairwise(topic.sizes))
