"""The soak: a constant rate of playbook refunds for a long while, on the stack a user gets.

    .venv/bin/python -m bench.soak [--rate 10] [--minutes 60] [--broker tansu|kafka]
                                   [--retention-minutes 10] [--window-s 30]

`charter up` in a fresh home, on the default broker unless `--broker` names one, with the
product's `support-refunds` agent and the demo's own tools (lookup, refund, notify: three
governed actions a run). Triggers go out at a constant rate from one producer; one consumer
follows `runs`. Every window: trigger -> completed latency p50/p99 (the services' own clocks),
runs completed a second, runs in flight, each process's CPU (% of one core, mean) and RSS (max),
and the records the topics hold (their end offsets, summed). At the end: the first five minutes
against the last five, and slopes per 10k records (latency, and each process's memory), in JSON
and a plot under bench/results. The topics keep `--retention-minutes` of history, so the soak
shows where memory settles once retention applies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.e2e import console
from bench.e2e.report import _machine
from bench.e2e.sample import Sampler
from bench.e2e.stack import REPO, Stack, _env
from charter import broker, topics
from charter.bus import Bus
from charter.client import Client
from charter.clock import new_id
from charter.config import Settings
from charter.events import RunCompleted, RunFailed, TriggerReceived

RESULTS = REPO / "bench" / "results"
TRIGGER = "support.refund_requested"
AGENT = REPO / "agents" / "support-refunds.yaml"
EDGE_S = 300.0  # the first and last five minutes, compared
WARMUP_S = 60.0


@dataclass
class Runs:
    """Every trigger published and how long its run took, from one consumer of `runs`."""

    sent: dict[str, datetime] = field(default_factory=dict)  # by correlation id
    ended: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, ms trigger -> end)
    failed: int = 0

    async def follow(self, client: Client) -> None:
        async with aclosing(client.subscribe("runs")) as records:
            async for received in records:
                event = received.event
                if not isinstance(event, RunCompleted | RunFailed):
                    continue
                occurred = self.sent.pop(event.envelope.correlation_id, None)
                if occurred is None:
                    continue
                if isinstance(event, RunFailed):
                    self.failed += 1
                ms = (event.envelope.occurred_at - occurred).total_seconds() * 1000
                self.ended.append((time.monotonic(), ms))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def _records(settings: Settings, consumer: AIOKafkaConsumer) -> int:
    """The records every topic holds now: the sum of the partitions' end offsets."""
    parts = [
        TopicPartition(name, p)
        for name in topics.all_names(settings)
        for p in range(topics.specs(settings)[name])
    ]
    ends = await consumer.end_offsets(parts)
    return int(sum(ends.values()))


async def _soak(settings: Settings, stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = Runs()
    windows: list[dict[str, Any]] = []
    sampler = Sampler(stack.pids(settings))
    offsets = AIOKafkaConsumer(**broker.consumer_kwargs(settings))
    async with Client(settings, source="bench") as client:
        bus = Bus(settings, client_id="charter-bench-soak")
        await bus.start()
        await offsets.start()
        follower = asyncio.create_task(runs.follow(client))
        try:
            await asyncio.sleep(2.0)  # the follower is assigned its partitions first
            sampler.start()
            start = time.monotonic()
            end = start + args.minutes * 60
            window_start = start
            serial = 0
            while (now := time.monotonic()) < end:
                due = int((now - start) * args.rate) + 1 - serial
                for _ in range(max(0, due)):
                    serial += 1
                    event_id = new_id()
                    trigger = TriggerReceived.create(
                        event_id=event_id,
                        now=datetime.now(UTC),
                        tenant=settings.tenant,
                        correlation_id=event_id,
                        name=TRIGGER,
                        data={"order_id": f"S-{serial:08d}", "amount": 20},
                        source="bench",
                    )
                    runs.sent[event_id] = trigger.envelope.occurred_at
                    await bus.send(trigger)
                if follower.done():
                    follower.result()
                    raise RuntimeError("the consumer following runs stopped")
                if now - window_start >= args.window_s:
                    windows.append(
                        await _window(settings, offsets, runs, sampler, span=(window_start, now), began=start)
                    )
                    _say(windows[-1], serial)
                    window_start = now
                await asyncio.sleep(0.01)
        finally:
            sampler.stop()
            follower.cancel()
            await offsets.stop()
            await bus.stop()
    return windows


async def _window(
    settings: Settings,
    offsets: AIOKafkaConsumer,
    runs: Runs,
    sampler: Sampler,
    *,
    span: tuple[float, float],
    began: float,
) -> dict[str, Any]:
    start, end = span
    latencies = [ms for at, ms in runs.ended if start <= at < end]
    return {
        "at_s": round(end - began, 1),
        "p50_ms": round(_pct(latencies, 0.5), 1),
        "p99_ms": round(_pct(latencies, 0.99), 1),
        "completed_per_s": round(len(latencies) / (end - start), 2),
        "in_flight": len(runs.sent),
        "failed": runs.failed,
        "records": await _records(settings, offsets),
        "processes": sampler.window(start, end),
        "latencies": latencies,
    }


def _say(w: dict[str, Any], sent: int) -> None:
    brokers = w["processes"].get("broker", {})
    console.print(
        f"{w['at_s']:>7.0f}s  p50/p99 {w['p50_ms']:>6.0f}/{w['p99_ms']:<6.0f} ms  "
        f"{w['completed_per_s']:>5.1f} done/s  in flight {w['in_flight']:>5}  sent {sent:>7}  "
        f"records {w['records']:>8}  broker {brokers.get('cpu_pct', 0):>5.1f}% {brokers.get('rss_mb', 0):>6.1f} MB"
    )


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs (0 with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return 0.0
    return float(statistics.linear_regression(xs, ys).slope)


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    total = windows[-1]["at_s"]
    # The first minute is the JVM's and the services' warm-up (a p99 of a second there), not
    # the stack's steady state: the first five minutes are counted after it.
    first = [w for w in windows if WARMUP_S < w["at_s"] <= WARMUP_S + EDGE_S]
    last = [w for w in windows if w["at_s"] > total - EDGE_S]
    settled = [w for w in windows if w["at_s"] > EDGE_S] or last

    def p(ws: list[dict[str, Any]], q: float) -> float:
        return round(_pct([ms for w in ws for ms in w["latencies"]], q), 1)

    names = sorted(
        {n for w in windows for n in w["processes"]} - {"machine", "machine steal", "bench client"}
    )
    records = [w["records"] / 10_000 for w in windows]
    memory: dict[str, Any] = {}
    for name in names:
        rss = [w["processes"].get(name, {}).get("rss_mb", 0.0) for w in windows]
        after = [w["processes"].get(name, {}).get("rss_mb", 0.0) for w in settled]
        memory[name] = {
            "first_mb": rss[0],
            "at_5_min_mb": after[0],
            "last_mb": rss[-1],
            "max_mb": max(rss),
            "growth_after_5_min_pct": round((max(after) / after[0] - 1) * 100, 1) if after[0] else None,
            "mb_per_10k_records": round(_slope(records, rss), 2),
            "cpu_pct_first_5_min": round(statistics.fmean(
                w["processes"].get(name, {}).get("cpu_pct", 0.0) for w in first), 1),
            "cpu_pct_last_5_min": round(statistics.fmean(
                w["processes"].get(name, {}).get("cpu_pct", 0.0) for w in last), 1),
        }  # fmt: skip
    return {
        "first_5_min_after_warmup": {"p50_ms": p(first, 0.5), "p99_ms": p(first, 0.99)},
        "last_5_min": {"p50_ms": p(last, 0.5), "p99_ms": p(last, 0.99)},
        "p99_last_over_first": round(p(last, 0.99) / p(first, 0.99), 2),
        "p50_ms_per_10k_records": round(_slope(records, [w["p50_ms"] for w in windows]), 2),
        "completed_per_s_last_5_min": round(statistics.fmean(w["completed_per_s"] for w in last), 2),
        "in_flight_at_end": windows[-1]["in_flight"],
        "failed": windows[-1]["failed"],
        "records_at_end": windows[-1]["records"],
        "processes": memory,
    }


def _plot(windows: list[dict[str, Any]], title: str, path: Path) -> None:
    minutes = [w["at_s"] / 60 for w in windows]
    fig = Figure(figsize=(10, 7))
    FigureCanvasAgg(fig)
    latency, memory = fig.subplots(2, 1, sharex=True)
    latency.plot(minutes, [w["p50_ms"] for w in windows], label="p50")
    latency.plot(minutes, [w["p99_ms"] for w in windows], label="p99")
    latency.set_ylabel("trigger -> completed (ms)")
    latency.set_ylim(bottom=0)
    latency.legend()
    latency.set_title(title)
    names = sorted({n for w in windows for n in w["processes"]} - {"machine", "machine steal"})
    for name in names:
        memory.plot(minutes, [w["processes"].get(name, {}).get("rss_mb", 0.0) for w in windows], label=name)
    memory.set_ylabel("RSS (MB)")
    memory.set_xlabel("minutes")
    memory.legend(fontsize="small", ncol=3)
    fig.savefig(path, dpi=100)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="triggers a second")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument(
        "--broker", choices=["tansu", "kafka"], default=None, help="default: the one `charter up` chooses"
    )
    parser.add_argument("--retention-minutes", type=float, default=10.0, help="the topics' history")
    parser.add_argument("--window-s", type=float, default=30.0)
    return parser.parse_args()


def main() -> None:
    args = _args()
    machine = _machine()
    home = Path(tempfile.mkdtemp(prefix="charter-bench-soak-"))
    env = _env(home, telemetry=True, agents=[AGENT])
    env["CHARTER_TOPIC_RETENTION_HOURS"] = str(args.retention_minutes / 60)
    env.pop("CHARTER_BROKER", None)
    stack = Stack(home, env, *(["--broker", args.broker] if args.broker else []))
    try:
        ready = stack.wait_ready(300)
        settings = Settings(home=home)
        kind = settings.broker_kind
        console.print(f"stack ready in {ready:.1f}s on {kind}; {args.rate:g} runs/s for {args.minutes:g} min")
        windows = asyncio.run(_soak(settings, stack, args))
    finally:
        stack.close()
    summary = _summary(windows)
    name = f"soak-{kind}-{args.rate:g}per-s-{args.minutes:g}min"
    result = {
        "machine": machine,
        "broker": kind,
        "settings": vars(args),
        "ready_s": ready,
        "summary": summary,
        "windows": [{k: v for k, v in w.items() if k != "latencies"} for w in windows],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(windows, f"{args.rate:g} runs/s on {kind} for {args.minutes:g} min", RESULTS / f"{name}.png")
    console.print_json(json.dumps(summary))
    console.print(f"written: bench/results/{name}.json and .png")


if __name__ == "__main__":
    main()
