"""A producer the transaction tests can kill: writes events through Charter's transactional Bus.

    python -m tests.e2e.txn_writer TRANSACTIONAL_ID COUNT (hang|commit)

It opens a transaction, sends COUNT events with fixed ids, then either hangs (for the test to
SIGKILL it mid-transaction) or commits. Settings come from the CHARTER_* environment.
"""

from __future__ import annotations

import asyncio
import sys

from charter.bus import Bus
from charter.config import Settings
from charter.events import TriggerReceived
from tests.factories import NOW


def events(count: int) -> list[TriggerReceived]:
    return [
        TriggerReceived.create(
            event_id=f"txn-event-{i}", now=NOW, tenant="t", correlation_id=f"txn-{i}",
            name="txn.test", data={"i": i}, source="txn_writer",
        )
        for i in range(count)
    ]  # fmt: skip


async def main(transactional_id: str, count: int, mode: str) -> None:
    bus = Bus(Settings(), client_id="txn-writer", transactional_id=transactional_id)
    await bus.start()
    assert bus.transactional, "the broker has no transactions"
    async with bus.transaction():
        for event in events(count):
            await (await bus.send(event))
        print("sent", flush=True)
        if mode == "hang":
            await asyncio.sleep(3600)
    print("committed", flush=True)
    await bus.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
