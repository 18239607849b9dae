"""What a partition may commit when its records finish out of order.

A partition's committed offset is its lowest record not yet finished: everything below it is
done, so a crash redelivers nothing done and loses nothing undone. Records finished above that
point are named in the commit's metadata (a compressed bitmap, as confluentinc/parallel-consumer
does), so the next owner of the partition skips them rather than handling them again: on Apache
Kafka, whose transactions commit a finished record's outputs with the offsets, that is what keeps
each output on its topic once. Metadata too large for the broker is left out; the records it
would have named are then handled again, and the services' inboxes and idempotency keys make
that cost time, not effects.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import zlib

# Kafka's default offset.metadata.max.bytes is 4096.
MAX_METADATA = 4000
# Beyond this many offsets between the lowest pending and the highest finished, the bitmap is
# not even built: it would not fit, and building it every commit would cost.
MAX_SPAN = 1 << 19
_PREFIX = "done1:"


class PartitionOffsets:
    """Offsets of one partition, fetched since it was assigned: which are pending, which done.

    `committed` is where the partition's last commit left it; `skip`, offsets that commit's
    metadata names as done (they are finished as soon as they are fetched)."""

    def __init__(self, committed: int, skip: frozenset[int] = frozenset()) -> None:
        self._pending: set[int] = set()
        self._heap: list[int] = []  # pending offsets, lowest first; finished ones removed lazily
        self._done_above: set[int] = set()  # finished above the lowest pending
        self._next = committed  # one past the highest offset fetched (or the committed offset)
        self._skip = {o for o in skip if o >= committed}

    def fetched(self, offset: int) -> bool:
        """Note a record fetched; False if it was finished before (skip it)."""
        self._next = max(self._next, offset + 1)
        if offset in self._skip:
            self._skip.discard(offset)
            self._done_above.add(offset)
            return False
        self._pending.add(offset)
        heapq.heappush(self._heap, offset)
        return True

    def finished(self, offset: int) -> None:
        self._pending.discard(offset)
        self._done_above.add(offset)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def committable(self) -> int:
        """The offset to commit: the lowest pending, or one past the last fetched."""
        while self._heap and self._heap[0] not in self._pending:
            heapq.heappop(self._heap)
        low = self._heap[0] if self._heap else self._next
        self._done_above = {o for o in self._done_above if o > low}
        return low

    def metadata(self) -> str:
        """The finished offsets above `committable()`, for the commit's metadata ("" if none, or
        if they do not fit)."""
        low = self.committable()
        if not self._done_above:
            return ""
        span = max(self._done_above) - low
        if span > MAX_SPAN:
            return ""
        bits = bytearray((span + 7) // 8)
        for offset in self._done_above:
            i = offset - low - 1
            bits[i // 8] |= 1 << (i % 8)
        text = _PREFIX + base64.b64encode(zlib.compress(bytes(bits))).decode()
        return text if len(text) <= MAX_METADATA else ""


def done_offsets(committed: int, metadata: str | None) -> frozenset[int]:
    """The offsets a commit's metadata names as finished above `committed`."""
    if not metadata or not metadata.startswith(_PREFIX):
        return frozenset()
    try:
        bits = zlib.decompress(base64.b64decode(metadata[len(_PREFIX) :]))
    except (binascii.Error, zlib.error, ValueError):
        return frozenset()  # not ours, or damaged: handle everything again, which is safe
    return frozenset(
        committed + 1 + i * 8 + b for i, byte in enumerate(bits) for b in range(8) if byte >> b & 1
    )
