"""How fast the embedded stack gets ready, and how long a governed run takes.

    .venv/bin/python bench/latency.py [--broker tansu|kafka] [--starts 3] [--runs 30]

Starts `charter up` `--starts` times in fresh homes and reports the time to ready each time.
On the last stack it publishes `--runs` small refunds one after another (three governed
actions each: 10 Kafka hops through three services) and reports, as medians and p90:
  - pipeline: the trigger's occurred_at to RunCompleted's occurred_at (the services' own clocks);
  - client: publish call to the RunCompleted arriving at a subscriber (adds the client's hops).
Results go to bench/results/latency-<broker>.json. On Kafka every hop is a transaction (outputs
and input offsets committed together) read by read_committed consumers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

from charter.client import Client
from charter.clock import derive_id
from charter.config import Settings
from charter.events import RunCompleted
from charter.stack.harness import StackProcess

REPO = Path(__file__).resolve().parent.parent


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env.update(
        CHARTER_HOME=str(home),
        CHARTER_AGENTS_DIR=str(REPO / "agents"),
        CHARTER_POLICIES_DIR=str(REPO / "policies"),
        CHARTER_TRACE_EXPORTER="none",
    )
    return env


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _runs(settings: Settings, count: int) -> tuple[list[float], list[float]]:
    pipeline: list[float] = []
    client_side: list[float] = []
    async with Client(settings, source="bench") as client:
        done: dict[str, asyncio.Future[RunCompleted]] = {}

        async def follow() -> None:
            async with aclosing(client.subscribe("runs")) as events:
                async for received in events:
                    event = received.event
                    if isinstance(event, RunCompleted) and event.run_id in done:
                        done[event.run_id].set_result(event)

        follower = asyncio.create_task(follow())
        await asyncio.sleep(1.0)  # the follower's consumer is assigned before the first publish
        for i in range(count):
            started = time.perf_counter()
            trigger = await client.publish(
                "support.refund_requested", {"order_id": f"B-{1000 + i}", "amount": 25}
            )
            run = derive_id(trigger.event_id, "run:support-refunds")
            done[run] = asyncio.get_running_loop().create_future()
            completed = await asyncio.wait_for(done[run], 30)
            client_side.append((time.perf_counter() - started) * 1000)
            pipeline.append(
                (completed.envelope.occurred_at - trigger.envelope.occurred_at).total_seconds() * 1000
            )
        follower.cancel()
    return pipeline, client_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    args = parser.parse_args()
    ready: list[float] = []
    pipeline: list[float] = []
    client_side: list[float] = []
    for n in range(args.starts):
        home = Path(tempfile.mkdtemp(prefix="charter-bench-"))
        stack = StackProcess(home, _env(home), "--broker", args.broker)
        try:
            ready.append(stack.wait_ready())
            print(f"start {n + 1}: ready in {ready[-1]:.1f}s")
            if n == args.starts - 1:
                pipeline, client_side = asyncio.run(_runs(Settings(home=home), args.runs))
        finally:
            stack.stop()
            shutil.rmtree(home, ignore_errors=True)
    refund = {
        "runs": len(pipeline),
        "pipeline_median": statistics.median(pipeline),
        "pipeline_p90": _pct(pipeline, 0.9),
        "client_median": statistics.median(client_side),
        "client_p90": _pct(client_side, 0.9),
    }
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "broker": args.broker,
        "time_to_ready_s": {"median": statistics.median(ready), "all": ready},
        "small_refund_ms": refund,
    }
    out = REPO / "bench" / "results" / f"latency-{args.broker}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"time to ready: median {statistics.median(ready):.1f}s over {len(ready)} starts")
    print(
        f"small refund, trigger to completed (3 governed actions, {refund['runs']} runs): "
        f"pipeline median {refund['pipeline_median']:.0f} ms, p90 {refund['pipeline_p90']:.0f} ms; "
        f"client median {refund['client_median']:.0f} ms, p90 {refund['client_p90']:.0f} ms"
    )


if __name__ == "__main__":
    main()
