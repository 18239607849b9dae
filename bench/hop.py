"""One bare hop on the embedded broker: a record's send to a consumer's fetch returning it.

    .venv/bin/python -m bench.hop [--waits 20,5,2] [--records 300] [--repeats 3]

Starts Tansu, then for each consumer fetch wait (CHARTER_FETCH_MAX_WAIT_MS) sends records one
at a time, at random gaps of up to 50 ms, with the product's producer and consumer settings
(acks=all, no linger; a consumer group of a three-partition topic, committing each batch as
the services do), and times each from its send to its arrival. No service, store or event
encoding: this is what the broker and the Kafka client cost a hop, the floor under the end-to-
end benchmark's hops (bench/e2e). Medians over the repeats of each percentile; results go to
bench/results/hop.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from bench.e2e.load import _pct
from charter import broker
from charter.config import Settings
from charter.stack.embedded import EmbeddedBroker

RESULTS = Path(__file__).parent / "results" / "hop.json"
MAX_GAP_S = 0.05  # random, so a send lands anywhere in a waiting fetch


def _percentiles(values: list[float]) -> dict[str, float]:
    ranked = sorted(values)
    return {name: round(_pct(ranked, q), 2) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}


async def _hops(settings: Settings, topic: str, records: int) -> dict[str, dict[str, float]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**broker.producer_kwargs(settings))
    consumer = AIOKafkaConsumer(
        topic, group_id=topic, **broker.consumer_kwargs(settings) | {"auto_offset_reset": "latest"}
    )
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        await asyncio.sleep(1.0)  # the first fetches of every partition are out
        acked, arrived = [], []
        for _ in range(records):
            began = time.perf_counter()
            await (await producer.send(topic, b"hop", partition=random.randrange(3)))
            acked.append((time.perf_counter() - began) * 1000)
            while not (batch := await consumer.getmany(timeout_ms=100)):
                pass
            arrived.append((time.perf_counter() - began) * 1000)
            await consumer.commit({tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batch.items()})
            await asyncio.sleep(random.uniform(0, MAX_GAP_S))
        return {"produce_ack": _percentiles(acked), "send_to_fetched": _percentiles(arrived)}
    finally:
        await consumer.stop()
        await producer.stop()


def _median(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        measure: {p: round(statistics.median(r[measure][p] for r in runs), 2) for p in runs[0][measure]}
        for measure in runs[0]
    }


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    tansu = EmbeddedBroker(Path(tempfile.mkdtemp(prefix="charter-bench-hop-")) / "broker.log")
    bootstrap = tansu.start()
    try:
        by_wait = {}
        for wait in args.waits:
            settings = Settings(fetch_max_wait_ms=wait).with_bootstrap(bootstrap, "tansu")
            runs = [await _hops(settings, f"hop-{wait}-{n}", args.records) for n in range(args.repeats)]
            by_wait[str(wait)] = _median(runs)
            hop = by_wait[str(wait)]["send_to_fetched"]
            print(
                f"fetch wait {wait:>3} ms: send to fetched p50 {hop['p50']} / p99 {hop['p99']} ms", flush=True
            )
        return {"records": args.records, "repeats": args.repeats, "fetch_max_wait_ms": by_wait}
    finally:
        tansu.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--waits", type=lambda s: [int(w) for w in s.split(",")], default=[20, 5, 2])
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    result = asyncio.run(_measure(parser.parse_args()))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
