"""The load: triggers published stage by stage, their actions followed, each stage summed up.

- Open loop: a stage per offered rate. Triggers go out from one producer in batches paced by the
  wall clock; the first `--warmup` s of a stage are not measured, the next `--seconds` are. The
  climb stops at the first stage not sustained: achieved under 95% of offered, runs unfinished
  once the stage drains, a failed or denied action, or trigger -> executed p99 over the bound.
- Closed loop: `--inflight` runs kept outstanding for as long: the most the stack can do.

Per stage: achieved ActionExecuted/s (as this process sees them arrive); latency from the
trigger's occurred_at to the ActionExecuted's (the services' own clocks, one host) and from
publish to observed here; the governance overhead, that latency less the tool's duration_ms,
split into hops (planner: trigger -> proposed; policy: proposed -> approved; executor: approved
-> executed less the tool); CPU (% of one core, mean) and RSS (max) of each service, the broker,
the supervisor and this process, sampled every 0.5 s. One consumer follows the action topics.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bench.e2e import console
from bench.e2e.sample import SATURATED_PCT, Sampler, _cpu_per_action
from bench.e2e.stack import Stack
from charter.bus import Bus
from charter.client import Client
from charter.clock import new_id
from charter.config import Settings
from charter.events import (
    ActionApproved,
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRejected,
    Event,
    ToolUnavailable,
    TriggerReceived,
)

TRIGGER = "bench.lookup"
TOPICS = ("actions.proposed", "actions.approved", "actions.rejected", "actions.results")
TICK_S = 0.01
DRAIN_IDLE_S = 10.0  # a stage's runs have stopped finishing: give up on the rest
DRAIN_MAX_S = 60.0
KEPT_UP = 0.95


@dataclass(frozen=True)
class Sent:
    stage: int
    published: float  # monotonic, this process
    occurred_at: datetime


@dataclass(frozen=True)
class Done:
    sent: Sent
    observed: float
    action_id: str
    executed_at: datetime
    tool_ms: float


@dataclass
class Tracker:
    """Every trigger published, and what became of its action, from one consumer."""

    sent: dict[str, Sent] = field(default_factory=dict)  # by correlation id
    published: dict[int, list[float]] = field(default_factory=dict)
    settled: Counter[int] = field(default_factory=Counter)
    done: list[Done] = field(default_factory=list)
    failures: Counter[tuple[int, str]] = field(default_factory=Counter)
    proposed: dict[str, datetime] = field(default_factory=dict)  # by action id
    approved: dict[str, datetime] = field(default_factory=dict)
    acks: list[tuple[float, float]] = field(default_factory=list)  # (sent, ms until acknowledged)

    def add(self, stage: int, trigger: TriggerReceived, published: float) -> None:
        self.sent[trigger.envelope.correlation_id] = Sent(stage, published, trigger.envelope.occurred_at)
        self.published.setdefault(stage, []).append(published)

    def in_flight(self, stage: int) -> int:
        return len(self.published.get(stage, [])) - self.settled[stage]

    async def follow(self, client: Client) -> None:
        async with aclosing(client.subscribe(*TOPICS)) as records:
            async for received in records:
                if received.event is not None:
                    self.handle(received.event, time.monotonic())

    def handle(self, event: Event, now: float) -> None:
        if isinstance(event, ActionProposed):
            self.proposed[event.action.action_id] = event.envelope.occurred_at
        elif isinstance(event, ActionApproved):
            self.approved[event.action.action_id] = event.envelope.occurred_at
        elif isinstance(event, ActionExecuted | ActionFailed | ActionRejected | ToolUnavailable):
            sent = self.sent.pop(event.envelope.correlation_id, None)
            if sent is None:
                return
            self.settled[sent.stage] += 1
            if isinstance(event, ActionExecuted):
                at = event.envelope.occurred_at
                self.done.append(Done(sent, now, event.action.action_id, at, event.duration_ms))
            else:
                self.failures[(sent.stage, type(event).__name__)] += 1


@dataclass(frozen=True)
class Plan:
    rate: float  # offered triggers a second (open loop); 0 for closed loop
    inflight: int  # runs kept outstanding (closed loop); 0 for open loop
    warmup_s: float
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.rate:g}/s offered" if self.rate else f"closed loop, {self.inflight} in flight"


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {f: round(_pct(ordered, q), 1) for f, q in (("p50", 0.5), ("p99", 0.99))} | {
        "max": round(ordered[-1], 1)
    }


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


def _latencies(done: list[Done], tracker: Tracker) -> dict[str, dict[str, float]]:
    lists: dict[str, list[float]] = {k: [] for k in ("trigger_to_executed", "publish_to_observed")}
    lists |= {k: [] for k in ("overhead", "planner", "policy", "executor", "tool")}
    for d in done:
        pipeline = _ms(d.sent.occurred_at, d.executed_at)
        lists["trigger_to_executed"].append(pipeline)
        lists["publish_to_observed"].append((d.observed - d.sent.published) * 1000)
        lists["overhead"].append(pipeline - d.tool_ms)
        lists["tool"].append(d.tool_ms)
        proposed, approved = tracker.proposed.get(d.action_id), tracker.approved.get(d.action_id)
        if proposed is not None and approved is not None:
            lists["planner"].append(_ms(d.sent.occurred_at, proposed))
            lists["policy"].append(_ms(proposed, approved))
            lists["executor"].append(_ms(approved, d.executed_at) - d.tool_ms)
    return {k: _dist(v) for k, v in lists.items()}


class Driver:
    """Publishes the load, stage by stage, and sums each stage up."""

    def __init__(self, settings: Settings, stack: Stack, bus: Bus, progress: Progress) -> None:
        self.settings = settings
        self.stack = stack
        self.bus = bus
        self.progress = progress
        self.tracker = Tracker()
        self.serial = 0
        self.max_p99_ms = 1000.0
        self.idle: dict[str, dict[str, float]] = {}
        self.follower: asyncio.Task[None] | None = None

    def _check(self) -> None:
        """Raise what stopped the consumer, rather than wait for runs nobody will see finish."""
        if self.follower is not None and self.follower.done():
            self.follower.result()
            raise RuntimeError("the consumer following the action topics stopped")

    async def rest(self, seconds: float) -> dict[str, dict[str, float]]:
        """Each process's CPU and memory with no load: the cost of being up (consumers polling)."""
        sampler = Sampler(self.stack.pids(self.settings))
        sampler.start()
        start = time.monotonic()
        await asyncio.sleep(seconds)
        sampler.stop()
        self.idle = sampler.window(start, time.monotonic())
        return self.idle

    async def publish(self, stage: int, count: int) -> None:
        """`count` triggers from the one producer, sent together, acknowledged by the broker."""
        futures = []
        began = time.monotonic()
        for _ in range(count):
            self.serial += 1
            event_id = new_id()
            trigger = TriggerReceived.create(
                event_id=event_id,
                now=datetime.now(UTC),
                tenant=self.settings.tenant,
                correlation_id=event_id,
                name=TRIGGER,
                data={"order_id": f"B-{self.serial:08d}"},
                source="bench",
            )
            self.tracker.add(stage, trigger, time.monotonic())
            futures.append(await self.bus.send(trigger))
        await asyncio.gather(*futures)
        # The broker's produce round trip under this load: what every service waits for before
        # it may commit what it read (once a record, or once a batch).
        self.tracker.acks.append((began, (time.monotonic() - began) * 1000))

    async def load(self, stage: int, plan: Plan, task: TaskID) -> None:
        start = time.monotonic()
        end = start + plan.warmup_s + plan.seconds
        while (now := time.monotonic()) < end:
            if plan.rate:
                due = int((now - start) * plan.rate) + 1 - len(self.tracker.published.get(stage, []))
            else:
                due = plan.inflight - self.tracker.in_flight(stage)
            if due > 0:
                await self.publish(stage, due)
            self._check()
            phase = "warm-up" if now - start < plan.warmup_s else "measuring"
            self.progress.update(task, completed=now - start, description=self._say(stage, plan, phase))
            await asyncio.sleep(TICK_S)

    def _say(self, stage: int, plan: Plan, phase: str) -> str:
        sent = len(self.tracker.published.get(stage, []))
        return f"{plan.label:<28} {phase:<9} sent {sent:>6}  in flight {self.tracker.in_flight(stage):>5}"

    async def drain(self, stage: int, plan: Plan, task: TaskID) -> float:
        """Wait for the stage's runs to finish, while they still do."""
        started = idle_since = time.monotonic()
        settled = -1
        while self.tracker.in_flight(stage) > 0:
            now = time.monotonic()
            if self.tracker.settled[stage] != settled:
                settled, idle_since = self.tracker.settled[stage], now
            if now - idle_since > DRAIN_IDLE_S or now - started > DRAIN_MAX_S:
                break
            self._check()
            self.progress.update(task, description=self._say(stage, plan, "draining"))
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def stage(self, stage: int, plan: Plan) -> dict[str, Any]:
        sampler = Sampler(self.stack.pids(self.settings))
        task = self.progress.add_task(plan.label, total=plan.warmup_s + plan.seconds)
        sampler.start()
        start = time.monotonic()
        try:
            await self.load(stage, plan, task)
            window = (start + plan.warmup_s, start + plan.warmup_s + plan.seconds)
            drain_s = await self.drain(stage, plan, task)
        finally:
            sampler.stop()
        result = self.summary(stage, plan, window, sampler) | {"drain_s": round(drain_s, 1)}
        self.progress.update(task, description=self._say(stage, plan, "done"))
        self.progress.stop_task(task)
        return result

    def summary(
        self, stage: int, plan: Plan, window: tuple[float, float], sampler: Sampler
    ) -> dict[str, Any]:
        start, end = window
        sent = sum(start <= t < end for t in self.tracker.published.get(stage, []))
        executed = sum(start <= d.observed < end for d in self.tracker.done)
        measured = [d for d in self.tracker.done if d.sent.stage == stage and start <= d.sent.published < end]
        failures = {k: n for (s, k), n in self.tracker.failures.items() if s == stage}
        processes = sampler.window(start, end)
        acks = [ms for at, ms in self.tracker.acks if start <= at < end]
        result = {
            "mode": "open" if plan.rate else "closed",
            "offered_per_s": plan.rate or None,
            "inflight": plan.inflight or None,
            "published_per_s": round(sent / plan.seconds, 1),
            "achieved_per_s": round(executed / plan.seconds, 1),
            "runs_measured": len(measured),
            "unfinished": self.tracker.in_flight(stage),
            "failures": failures,
            "latency_ms": _latencies(measured, self.tracker) | {"produce_ack": _dist(acks)},
            "processes": processes,
            "load_average": os.getloadavg(),
            "cpu_ms_per_action": _cpu_per_action(processes, self.idle, executed / plan.seconds),
        }
        return result | {"sustained": self._sustained(result), "client_bound": _client_bound(plan, result)}

    def _sustained(self, result: dict[str, Any]) -> bool:
        p99 = result["latency_ms"]["trigger_to_executed"].get("p99", float("inf"))
        kept_up = result["achieved_per_s"] >= KEPT_UP * result["published_per_s"]
        return bool(
            kept_up and not result["unfinished"] and not result["failures"] and p99 <= self.max_p99_ms
        )


def _client_bound(plan: Plan, result: dict[str, Any]) -> bool:
    """This process, not the stack, limited the stage: it fell behind its pace or ran out of CPU."""
    cpu = result["processes"].get("bench client", {}).get("cpu_pct", 0.0)
    behind = bool(plan.rate) and result["published_per_s"] < KEPT_UP * plan.rate
    return bool(behind or cpu >= SATURATED_PCT)


async def _stages(driver: Driver, args: argparse.Namespace) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for rate in args.rates:
        stages.append(await driver.stage(len(stages), Plan(rate, 0, args.warmup, args.seconds)))
        if not stages[-1]["sustained"]:
            console.print(f"{rate:g}/s not sustained: the climb stops here")
            break
    if args.inflight:
        stages.append(await driver.stage(len(stages), Plan(0, args.inflight, args.warmup, args.seconds)))
    return stages


Measured = tuple[list[dict[str, Any]], dict[str, dict[str, float]]]


async def _measure(settings: Settings, stack: Stack, args: argparse.Namespace) -> Measured:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    async with Client(settings, source="bench") as client:
        bus = Bus(settings, client_id="charter-bench")
        await bus.start()
        try:
            with Progress(*columns, console=console) as progress:
                driver = Driver(settings, stack, bus, progress)
                driver.max_p99_ms = args.max_p99_ms
                follower = driver.follower = asyncio.create_task(driver.tracker.follow(client))
                await asyncio.sleep(1.0)  # the follower is assigned its partitions first
                await driver.rest(max(3.0, args.warmup))
                try:
                    return await _stages(driver, args), driver.idle
                finally:
                    follower.cancel()
        finally:
            await bus.stop()
