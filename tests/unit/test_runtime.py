"""The runtime's bookkeeping: what a partition may commit when records finish out of order, and
records queued by key (one of a key in hand at a time, in order)."""

from __future__ import annotations

import asyncio

from charter.bus import TENANT_HEADER
from charter.runtime.delivery import Delivery
from charter.runtime.group import GroupWriter
from charter.runtime.keys import KeyQueues
from charter.runtime.offsets import MAX_METADATA, PartitionOffsets, done_offsets


def test_a_partition_commits_up_to_its_lowest_record_not_finished() -> None:
    offsets = PartitionOffsets(10)
    for o in range(10, 15):
        assert offsets.fetched(o)
    assert offsets.committable() == 10
    offsets.finished(12)
    offsets.finished(13)
    assert offsets.committable() == 10  # 10 and 11 are still in hand
    offsets.finished(10)
    assert offsets.committable() == 11
    offsets.finished(11)
    assert offsets.committable() == 14
    offsets.finished(14)
    assert offsets.committable() == 15  # everything fetched is done
    assert offsets.in_flight == 0


def test_a_commit_names_the_records_finished_above_it_and_the_next_owner_skips_them() -> None:
    first = PartitionOffsets(0)
    for o in range(8):
        first.fetched(o)
    for o in (1, 2, 5, 7):
        first.finished(o)
    committed, metadata = first.committable(), first.metadata()
    assert committed == 0
    assert done_offsets(committed, metadata) == {1, 2, 5, 7}

    # The partition's next owner fetches from 0 again, and handles only what was not finished.
    second = PartitionOffsets(committed, done_offsets(committed, metadata))
    handled = [o for o in range(8) if second.fetched(o)]
    assert handled == [0, 3, 4, 6]
    for o in handled:
        second.finished(o)
    assert second.committable() == 8
    assert second.metadata() == ""


def test_metadata_that_is_not_ours_or_too_large_means_handling_again_not_losing() -> None:
    assert done_offsets(5, "") == frozenset()
    assert done_offsets(5, "some other client's note") == frozenset()
    assert done_offsets(5, "done1:!!not base64!!") == frozenset()
    sparse = PartitionOffsets(0)
    sparse.fetched(0)
    # Finished records spread so far apart that no bitmap of them fits the broker's limit.
    for o in range(1, 40_000_000, 9_973):
        sparse.fetched(o)
        sparse.finished(o)
    text = sparse.metadata()
    assert text == "" or len(text) <= MAX_METADATA


def _d(key: bytes | None, offset: int, partition: int = 0) -> Delivery:
    return Delivery("t", partition, offset, key, b"", (), 0)


def test_one_record_of_a_key_is_in_hand_at_a_time_and_keys_go_in_order() -> None:
    queues = KeyQueues()
    for offset, key in enumerate([b"a", b"a", b"b", b"a", b"c", b"b"]):
        queues.push(_d(key, offset))
    first = queues.take_heads(10)
    assert [(d.key, d.offset) for d in first] == [(b"a", 0), (b"b", 2), (b"c", 4)]
    assert queues.take_heads(10) == []  # every key with records is in hand
    queues.release(first[1])  # b's first is done: its next may go
    assert [(d.key, d.offset) for d in queues.take_heads(10)] == [(b"b", 5)]
    queues.release(first[0])
    assert [(d.key, d.offset) for d in queues.take_heads(10)] == [(b"a", 1)]
    assert queues.queued == 1  # a's third waits for its second


def _of(tenant: str, key: str, offset: int) -> Delivery:
    return Delivery("t", 0, offset, key.encode(), b"", ((TENANT_HEADER, tenant.encode()),), 0)


def test_a_free_slot_goes_to_the_tenant_holding_fewest_not_to_the_oldest_record() -> None:
    queues = KeyQueues()
    for i in range(6):  # acme's flood, in first
        queues.push(_of("acme", f"a{i}", i))
    first = queues.take_heads(2)  # two slots, both acme's: nobody else is waiting
    assert [d.key for d in first] == [b"a0", b"a1"]
    queues.push(_of("globex", "g0", 6))
    queues.release(first[0])
    # The slot freed goes to globex, behind four older acme records.
    assert [d.key for d in queues.take_heads(1)] == [b"g0"]
    assert (queues.in_hand["acme"], queues.in_hand["globex"], queues.waiting["acme"]) == (1, 1, 4)


def test_slots_alternate_between_tenants_with_records_waiting() -> None:
    queues = KeyQueues()
    for i in range(3):
        queues.push(_of("acme", f"a{i}", i))
    for i in range(3):
        queues.push(_of("globex", f"g{i}", 3 + i))
    queues.push(Delivery("t", 0, 6, b"x", b"", (), 0))  # names no tenant: a group of its own
    assert [d.key for d in queues.take_heads(5)] == [b"a0", b"g0", b"x", b"a1", b"g1"]


def test_records_without_a_key_keep_their_partitions_order() -> None:
    queues = KeyQueues()
    queues.push(_d(None, 0, partition=0))
    queues.push(_d(None, 1, partition=0))
    queues.push(_d(None, 0, partition=1))
    taken = queues.take_heads(10)
    assert [(d.partition, d.offset) for d in taken] == [(0, 0), (1, 0)]


def test_a_revoked_partitions_queued_records_are_dropped() -> None:
    queues = KeyQueues()
    queues.push(_d(b"a", 0, partition=0))
    queues.push(_d(b"a", 1, partition=1))
    queues.push(_d(b"b", 2, partition=1))
    dropped = queues.drop(lambda d: d.partition == 1)
    assert sorted(d.offset for d in dropped) == [1, 2]
    assert [(d.key, d.offset) for d in queues.take_heads(10)] == [(b"a", 0)]
    assert queues.queued == 0


def test_writes_put_in_the_same_turn_are_made_as_one_and_each_waits_for_it() -> None:
    writes: list[list[int]] = []

    async def go() -> None:
        group = GroupWriter[int](writes.append)
        await asyncio.gather(*(group.put(n) for n in range(5)))
        await group.put(5)

    asyncio.run(go())
    assert writes == [[0, 1, 2, 3, 4], [5]]


def test_a_failed_group_write_fails_every_record_in_it() -> None:
    def fail(_items: list[int]) -> None:
        raise RuntimeError("database is locked")

    async def go() -> list[BaseException | None]:
        group = GroupWriter[int](fail)
        return await asyncio.gather(*(group.put(n) for n in range(3)), return_exceptions=True)

    assert [type(r) for r in asyncio.run(go())] == [RuntimeError] * 3
