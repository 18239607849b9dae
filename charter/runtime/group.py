"""Group commit: writes that many records want durable at about the same moment, made as one.

Records handled side by side finish at about the same time (a burst of answers from a tool);
each must have its effect durable before its outputs are sent, but not in a transaction of its
own. A record `put`s its item and waits; the first put of a turn of the event loop schedules one
write for every item put before that write runs, and each waiter wakes once it is done (or with
its error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupWriter(Generic[T]):
    def __init__(self, write: Callable[[list[T]], None]) -> None:
        self._write = write
        self._items: list[T] = []
        self._written: asyncio.Future[None] | None = None

    async def put(self, item: T) -> None:
        """Return once `item` has been written, with whatever else was put meanwhile."""
        self._items.append(item)
        if self._written is None:
            loop = asyncio.get_running_loop()
            self._written = loop.create_future()
            loop.call_soon(self._flush)
        await asyncio.shield(self._written)

    def _flush(self) -> None:
        items, self._items = self._items, []
        written, self._written = self._written, None
        assert written is not None
        try:
            self._write(items)
        except Exception as exc:  # every waiter hears it: its item may not be durable
            written.set_exception(exc)
            return
        written.set_result(None)
