"""Records queued by key: one record of a key in hand at a time, the key's next once it is done;
and the keys ready to go taken fairly across tenants.

The key is the record's Kafka key, which is the run id (or the correlation id before a run
exists), so a run's records are handled in the order they came and different runs' side by
side. A record with no key is ordered with its partition.

The tenant is the record's `charter-tenant` header, which the bus sets from the event's
envelope. When the slots in hand are fewer than the keys ready, the next slot goes to the tenant
holding the fewest, its oldest ready key first: a tenant's flood fills the queue, not every slot,
so another tenant's runs wait for the next slot to free rather than for the whole flood.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable

from charter.bus import TENANT_HEADER
from charter.runtime.delivery import Delivery


def key_of(delivery: Delivery) -> Hashable:
    return delivery.key if delivery.key is not None else (delivery.topic, delivery.partition)


def tenant_of(delivery: Delivery) -> str:
    """The record's tenant, or "" for a record that names none (one written by another tool)."""
    for name, value in delivery.headers:
        if name == TENANT_HEADER:
            return value.decode(errors="replace")
    return ""


class KeyQueues:
    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[Delivery]] = {}
        self._busy: dict[Hashable, str] = {}  # key in hand -> its tenant
        # Keys not busy with something queued, oldest first, by tenant.
        self._ready: dict[str, deque[Hashable]] = {}
        self.in_hand: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()  # records queued, by tenant
        self.queued = 0

    def push(self, delivery: Delivery) -> None:
        key = key_of(delivery)
        queue = self._queues.setdefault(key, deque())
        queue.append(delivery)
        self.queued += 1
        self.waiting[tenant_of(delivery)] += 1
        if len(queue) == 1 and key not in self._busy:
            self._ready.setdefault(tenant_of(delivery), deque()).append(key)

    def take_heads(self, limit: int) -> list[Delivery]:
        """The next record of up to `limit` keys not in hand, a slot at a time to the tenant
        holding fewest; their keys are then busy."""
        taken: list[Delivery] = []
        while self._ready and len(taken) < limit:
            tenant = min(self._ready, key=self.in_hand.__getitem__)
            ready = self._ready[tenant]
            key = ready.popleft()
            if not ready:
                del self._ready[tenant]
            taken.append(self._queues[key].popleft())
            self._busy[key] = tenant
            self.in_hand[tenant] += 1
            self.waiting[tenant] -= 1
        self.queued -= len(taken)
        return taken

    def release(self, delivery: Delivery) -> None:
        """A record of this key is done: its next, if any, may be taken."""
        key = key_of(delivery)
        tenant = self._busy.pop(key, None)
        if tenant is None:
            return
        self.in_hand[tenant] -= 1
        queue = self._queues.get(key)
        if queue:
            self._ready.setdefault(tenant_of(queue[0]), deque()).append(key)
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
        for d in dropped:
            self.waiting[tenant_of(d)] -= 1
        # Filed again under their heads' tenants: a key's next record may name another.
        ready: dict[str, deque[Hashable]] = {}
        for keys in self._ready.values():
            for key in keys:
                waiting = self._queues.get(key)
                if waiting:
                    ready.setdefault(tenant_of(waiting[0]), deque()).append(key)
        self._ready = ready
        self.queued -= len(dropped)
        return dropped
