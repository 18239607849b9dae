"""Records queued by key: one record of a key in hand at a time, the key's next once it is done.

The key is the record's Kafka key, which is the run id (or the correlation id before a run
exists), so a run's records are handled in the order they came and different runs' side by
side. A record with no key is ordered with its partition.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable

from charter.runtime.delivery import Delivery


def key_of(delivery: Delivery) -> Hashable:
    return delivery.key if delivery.key is not None else (delivery.topic, delivery.partition)


class KeyQueues:
    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[Delivery]] = {}
        self._busy: set[Hashable] = set()
        self._ready: deque[Hashable] = deque()  # keys not busy with something queued, oldest first
        self.queued = 0

    def push(self, delivery: Delivery) -> None:
        key = key_of(delivery)
        queue = self._queues.setdefault(key, deque())
        queue.append(delivery)
        self.queued += 1
        if len(queue) == 1 and key not in self._busy:
            self._ready.append(key)

    def take_heads(self, limit: int) -> list[Delivery]:
        """The next record of up to `limit` keys not in hand; their keys are then busy."""
        taken: list[Delivery] = []
        while self._ready and len(taken) < limit:
            key = self._ready.popleft()
            taken.append(self._queues[key].popleft())
            self._busy.add(key)
        self.queued -= len(taken)
        return taken

    def release(self, delivery: Delivery) -> None:
        """A record of this key is done: its next, if any, may be taken."""
        key = key_of(delivery)
        if key not in self._busy:
            return
        self._busy.discard(key)
        queue = self._queues.get(key)
        if queue:
            self._ready.append(key)
        elif queue is not None:
            del self._queues[key]

    def drop(self, unwanted: Callable[[Delivery], bool]) -> list[Delivery]:
        """Forget the queued records `unwanted` names (a revoked partition's), and return them."""
        dropped: list[Delivery] = []
        for key in list(self._queues):
            queue = self._queues[key]
            dropped += [d for d in queue if unwanted(d)]
            kept = deque(d for d in queue if not unwanted(d))
            if kept or key in self._busy:
                self._queues[key] = kept
            else:
                del self._queues[key]
        self._ready = deque(k for k in self._ready if self._queues.get(k))
        self.queued -= len(dropped)
        return dropped
