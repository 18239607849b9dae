"""End to end: how many governed actions a second the stack sustains, at what latency and cost.

    .venv/bin/python bench/e2e.py [--broker tansu|kafka] [--rates 25,50,100,200,400] [--seconds 20]
        [--warmup 5] [--inflight 50] [--max-p99-ms 1000] [--no-telemetry]

Starts `charter up` in a fresh home with one agent (bench/agents/bench-lookup.yaml: one step,
lookup_order, which policy allows outright) and limits wide enough for the load, then drives
single-action runs: trigger -> ActionProposed -> ActionApproved (policy) -> ActionExecuted.

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
Product defaults (traces to file, metrics served) unless --no-telemetry. Results go to
bench/results/e2e-<broker>[-no-telemetry].json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

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
from charter.stack import readiness
from charter.stack.harness import StackProcess
from charter.stack.processes import free_port, free_ports, spawn
from charter.stack.supervisor import SERVICES

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TRIGGER = "bench.lookup"
TOPICS = ("actions.proposed", "actions.approved", "actions.rejected", "actions.results")
LIMITS = """defaults:
  max_steps: 20
  loop_threshold: 3
  budget_per_run: 50
  budget_per_day: 1000000000
  rate: {count: 1000000000, per_seconds: 60}
"""
TICK_S = 0.01
SAMPLE_S = 0.5
DRAIN_IDLE_S = 10.0  # a stage's runs have stopped finishing: give up on the rest
DRAIN_MAX_S = 60.0
KEPT_UP = 0.95
SATURATED_PCT = 90.0
MACHINE = {"machine", "machine steal"}  # not processes: the whole machine's busy and stolen time
console = Console(width=None if sys.stdout.isatty() else 110)  # piped: wide enough for the tables


class Stack(StackProcess):
    """`charter up` as StackProcess runs it, but dying with this process even by SIGKILL (a
    `timeout -s KILL` around the benchmark), so a bounded run leaves no stack behind."""

    def __init__(self, home: Path, env: dict[str, str], *args: str) -> None:
        self.home, self.env, self.output = home, env, home / "up.out"
        self.proc = spawn([sys.executable, "-m", "charter", "up", *args], self.output, env)

    def pids(self, settings: Settings) -> dict[str, int]:
        """Each process to sample: the five services, the broker, the supervisor, this one."""
        pids = readiness.ready_pids(settings)
        broker = json.loads(settings.stack_file.read_text()).get("broker_pid")
        if broker:
            pids["broker"] = int(broker)
        return {**pids, "supervisor": self.proc.pid, "bench client": os.getpid()}


def _env(home: Path, telemetry: bool) -> dict[str, str]:
    config = home / "config"
    (config / "agents").mkdir(parents=True)
    for agent in (REPO / "bench" / "agents").glob("*.yaml"):
        shutil.copy(agent, config / "agents" / agent.name)
    shutil.copytree(REPO / "policies", config / "policies")
    (config / "policies" / "limits.yaml").write_text(LIMITS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env.update(
        CHARTER_HOME=str(home),
        CHARTER_AGENTS_DIR=str(config / "agents"),
        CHARTER_POLICIES_DIR=str(config / "policies"),
        CHARTER_USERS_FILE=str(REPO / "users.yaml"),
        CHARTER_API_PORT=str(free_port()),
        CHARTER_METRICS_PORT=str(free_ports(len(SERVICES))),
        PYTHONUNBUFFERED="1",
    )
    if not telemetry:
        env.update(CHARTER_TRACE_EXPORTER="none", CHARTER_METRICS_PORT="0")
    return env


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


class Sampler(threading.Thread):
    """CPU (% of one core since the last sample) and RSS of some processes, every 0.5 s."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if psutil.pid_exists(pid)}
        self.samples: list[tuple[float, str, float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        for proc in self.procs.values():
            proc.cpu_percent(None)
        psutil.cpu_times_percent(None)
        while not self._halt.wait(SAMPLE_S):
            now = time.monotonic()
            for name, proc in self.procs.items():
                try:
                    with proc.oneshot():
                        self.samples.append((now, name, proc.cpu_percent(None), proc.memory_info().rss))
                except psutil.Error:
                    continue
            # The whole machine, in % of one core: others share it, and this says how much they
            # took; steal is time the hypervisor gave this VM's cores to someone else.
            times = psutil.cpu_times_percent(None)
            cores = psutil.cpu_count() or 1
            self.samples.append((now, "machine", (100 - times.idle) * cores, 0))
            self.samples.append((now, "machine steal", getattr(times, "steal", 0.0) * cores, 0))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def window(self, start: float, end: float) -> dict[str, dict[str, float]]:
        cpu: dict[str, list[float]] = {}
        rss: dict[str, int] = {}
        for at, name, pct, size in self.samples:
            if start <= at <= end:
                cpu.setdefault(name, []).append(pct)
                rss[name] = max(rss.get(name, 0), size)
        return {
            name: {"cpu_pct": round(statistics.fmean(v), 1), "rss_mb": round(rss[name] / 2**20, 1)}
            for name, v in cpu.items()
        }


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


def _cpu_per_action(
    processes: dict[str, dict[str, float]], idle: dict[str, dict[str, float]], rate: float
) -> dict[str, float]:
    """CPU milliseconds each process spends per governed action, above its idle cost."""
    if not rate:
        return {}
    per = {
        name: max(0.0, v["cpu_pct"] - idle.get(name, {}).get("cpu_pct", 0.0)) * 10 / rate
        for name, v in processes.items()
        if name not in {*MACHINE, "supervisor"}
    }
    stack = sum(v for k, v in per.items() if k != "bench client")
    return {k: round(v, 2) for k, v in per.items()} | {"stack total": round(stack, 2)}


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


def _machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")
    ]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _top(stages: list[dict[str, Any]]) -> dict[str, Any]:
    return max(stages, key=lambda s: s["achieved_per_s"])


def _bottleneck(stage: dict[str, Any]) -> dict[str, Any]:
    """The busiest process at the top stage; a Python service tops out at one core."""
    busy = {k: v["cpu_pct"] for k, v in stage["processes"].items() if k not in {*MACHINE, "bench client"}}
    name = max(busy, key=lambda k: busy[k])
    return {"process": name, "cpu_pct": busy[name], "saturated": busy[name] >= SATURATED_PCT}


def _fmt(dist: dict[str, float]) -> str:
    return f"{dist['p50']:.0f}/{dist['p99']:.0f}" if dist else "-"


def _table(result: dict[str, Any]) -> None:
    """Latencies in ms, p50/p99: trigger -> executed, publish -> observed here, less the tool."""
    table = Table(
        title=f"end to end on {result['broker']}, telemetry {'on' if result['telemetry'] else 'off'} (ms)",
        box=box.SIMPLE_HEAD,
    )
    for col in ("stage", "sent/s", "done/s", "e2e", "client", "overhead", "planner", "policy", "ok"):
        table.add_column(col, justify="right")
    for s in result["stages"]:
        lat = s["latency_ms"]
        table.add_row(
            f"{s['offered_per_s']:g}/s" if s["offered_per_s"] else f"closed {s['inflight']}",
            f"{s['published_per_s']:.0f}",
            f"{s['achieved_per_s']:.0f}",
            *(_fmt(lat[k]) for k in ("trigger_to_executed", "publish_to_observed", "overhead")),
            *(_fmt(lat[k]) for k in ("planner", "policy")),
            ("yes" if s["sustained"] else "no") if s["mode"] == "open" else "",
        )
    console.print(table)
    top = _top(result["stages"])
    cpu = Table(title=f"per process at the top stage ({top['achieved_per_s']:.0f}/s)", box=box.SIMPLE_HEAD)
    for col in ("process", "CPU %, idle", "CPU %", "CPU ms/action", "RSS MB"):
        cpu.add_column(col, justify="right")
    for name, v in sorted(top["processes"].items(), key=lambda kv: -kv[1]["cpu_pct"]):
        idle = result["idle"].get(name, {}).get("cpu_pct")
        per = top["cpu_ms_per_action"].get(name)
        cpu.add_row(
            name,
            "" if idle is None else f"{idle:.0f}",
            f"{v['cpu_pct']:.0f}",
            "" if per is None else f"{per:.1f}",
            f"{v['rss_mb']:.0f}" if name not in MACHINE else "",
        )
    cpu.add_row("stack total", "", "", f"{top['cpu_ms_per_action'].get('stack total', 0):.1f}", "")
    console.print(cpu)


def _plot(result: dict[str, Any], out: Path) -> None:
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    rate_ax, lat_ax, cpu_ax = fig.subplots(1, 3)
    open_stages = [s for s in result["stages"] if s["mode"] == "open"]
    offered = [s["offered_per_s"] for s in open_stages]
    rate_ax.plot(offered, offered, ":", color="grey", label="offered")
    rate_ax.plot(offered, [s["achieved_per_s"] for s in open_stages], "o-", label="achieved")
    for s in result["stages"]:
        if s["mode"] == "closed":
            rate_ax.axhline(s["achieved_per_s"], ls="--", color="C3", label=f"closed loop ({s['inflight']})")
    rate_ax.set(xlabel="offered triggers/s", ylabel="ActionExecuted/s", title="throughput")
    rate_ax.legend()
    for key, style in (("p50", "o-"), ("p99", "s--")):
        points = [(s["offered_per_s"], s["latency_ms"]["trigger_to_executed"].get(key)) for s in open_stages]
        lat_ax.plot(*zip(*[p for p in points if p[1] is not None], strict=True), style, label=key)
    lat_ax.set(xlabel="offered triggers/s", ylabel="trigger → executed, ms", yscale="log", title="latency")
    lat_ax.yaxis.set_major_formatter(ScalarFormatter())
    lat_ax.legend()
    top = _top(result["stages"])
    procs = sorted(
        (k for k in top["processes"] if k not in MACHINE), key=lambda k: -top["processes"][k]["cpu_pct"]
    )
    cpu_ax.bar(procs, [top["processes"][k]["cpu_pct"] for k in procs])
    cpu_ax.axhline(100, ls=":", color="grey")
    cpu_ax.set(ylabel="CPU, % of one core", title=f"CPU at {top['achieved_per_s']:.0f} executed/s")
    cpu_ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"Charter end to end on {result['broker']} ({result['machine']['cpus']} cores)")
    fig.savefig(out, dpi=110)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument(
        "--rates", type=lambda s: [float(r) for r in s.split(",")], default=[25, 50, 100, 200, 400]
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per stage")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="unmeasured seconds at the start of a stage"
    )
    parser.add_argument(
        "--inflight", type=int, default=50, help="closed-loop runs outstanding; 0: no such stage"
    )
    parser.add_argument("--max-p99-ms", type=float, default=1000.0, help="a stage's latency bound")
    parser.add_argument("--no-telemetry", action="store_true", help="no trace file, no metrics endpoints")
    return parser.parse_args()


def _run(args: argparse.Namespace) -> tuple[Measured, Settings]:
    home = Path(tempfile.mkdtemp(prefix="charter-bench-e2e-"))
    stack = Stack(home, _env(home, telemetry=not args.no_telemetry), "--broker", args.broker)
    try:
        console.print(f"stack ready in {stack.wait_ready(180 if args.broker == 'kafka' else 60):.1f}s")
        settings = Settings(home=home, broker=args.broker)
        return asyncio.run(_measure(settings, stack, args)), settings
    finally:
        try:
            stack.stop()
        except subprocess.TimeoutExpired:
            stack.proc.kill()  # its services and broker die with it
            stack.proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    args = _args()
    machine = _machine()
    (stages, idle), settings = _run(args)
    result = {
        "machine": machine,
        "broker": args.broker,
        "telemetry": not args.no_telemetry,
        "settings": {
            "rates": args.rates,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "inflight": args.inflight,
            "max_p99_ms": args.max_p99_ms,
            "agent": "bench-lookup",
            "tool": "lookup_order",
            "partitions": settings.partitions,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        },
        "idle": idle,
        "stages": stages,
        "max_sustained_per_s": max(
            (s["achieved_per_s"] for s in stages if s["mode"] == "open" and s["sustained"]), default=None
        ),
        "closed_loop_per_s": next((s["achieved_per_s"] for s in stages if s["mode"] == "closed"), None),
        "bottleneck": _bottleneck(_top(stages)),
    }
    name = f"e2e-{args.broker}{'' if result['telemetry'] else '-no-telemetry'}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, RESULTS / f"{name}.png")
    _table(result)
    if any(s["client_bound"] for s in stages):
        console.print(
            "[yellow]the bench client itself was the limit in some stage (client_bound in the JSON)"
        )
    b = result["bottleneck"]
    console.print(
        f"highest rate sustained: {result['max_sustained_per_s']}/s; closed loop: {result['closed_loop_per_s']}/s; "
        f"busiest at the top: {b['process']} at {b['cpu_pct']:.0f}% of a core"
        f"{' (saturated)' if b['saturated'] else ''}. Results: {RESULTS / name}.json, .png"
    )


if __name__ == "__main__":
    main()
