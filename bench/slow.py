"""Runs a second when every run waits on the outside world: a model, or a tool, that takes a second.

    .venv/bin/python -m bench.slow [--kind model,tool] [--counts 100,500,1000] [--repeats 3]
        [--delay-s 1.0] [--broker tansu|kafka] [--max-in-flight N] [--tool-threads N]
        [--llm-max-concurrency N] [--timeout-s 5400] [--out bench/results/slow.json]

Two agents, each on a fresh embedded stack (`charter up`, the end-to-end benchmark's config
plus the two agents and a policy permitting the slow tool, written into its home):
  - model: bench-slow-model, planned by a model (bench/slow_model.py) that answers every call
    `--delay-s` after it is asked: it calls lookup_order (instant), then answers. Two model calls
    a run, one governed action.
  - tool: bench-slow-tool, a one-step playbook calling slow_lookup (bench/slow_tools.py), an
    ordinary synchronous Python tool that sleeps `--delay-s`.
For each count N: N triggers published at once (concurrently, so the producer batches them);
runs a second = N / (first publish -> the last run's RunCompleted, RunFailed, RunCancelled or
RunEscalated, by the services' clocks on this host). A run that ends otherwise than completed is
counted and reported, never dropped; a stage with runs not ended after max(120 s, N/5 s) is
reported as not finished, with how many ended, and ends that kind (its stack is backlogged).
Medians, min and max over `--repeats`, with the most model calls (model server) and tool calls
(from ActionExecuted times and durations) in flight at once. Results: bench/results/slow.json.

--max-in-flight, --tool-threads and --llm-max-concurrency are passed to the services as
CHARTER_MAX_IN_FLIGHT, CHARTER_TOOL_THREADS and CHARTER_LLM_MAX_CONCURRENCY, each only if given:
by default the product's own defaults are measured.
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
import time
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

# `python bench/slow.py` as well as `python -m bench.slow`: the repository is the import root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e.stack import REPO, Stack, _env
from bench.slow_tools import DELAY_ENV
from charter.client import Client
from charter.clock import derive_id
from charter.config import Settings
from charter.events import RUN_TERMINAL, ActionExecuted, Event, RunCompleted
from charter.stack.harness import StackNotReady, wait_answering
from charter.stack.processes import free_port, spawn, stop

RESULTS = REPO / "bench" / "results"
PUBLISH_BATCH = 250  # triggers awaited together: the producer sends them in a few batches
WARMUP_RUNS = 2

AGENTS = {
    "bench-slow-model.yaml": """\
# bench/slow.py's model-planned agent: its model (bench/slow_model.py) answers in a set time,
# calling lookup_order once, then answering. Two model calls and one governed action a run.
id: bench-slow-model
owner: bench@example.com
description: Looks an order up as its model says, once a run.
environment: production
roles: [support]
triggers:
  - event: bench.slow_model
tools: [lookup_order]
plan: llm
llm:
  instructions: Look the order up, then say what you found.
  max_turns: 4
  resources:
    lookup_order: "order/{{ params.order_id }}"
""",
    "bench-slow-tool.yaml": """\
# bench/slow.py's playbook agent: one step, a synchronous tool that sleeps (bench/slow_tools.py).
id: bench-slow-tool
owner: bench@example.com
description: Looks an order up in a slow system, once a run.
environment: production
roles: [support]
triggers:
  - event: bench.slow_tool
tools: [slow_lookup]
steps:
  - id: look
    tool: slow_lookup
    resource: "order/{{ trigger.order_id }}"
    parameters:
      order_id: "{{ trigger.order_id }}"
""",
}
CEDAR = """// bench/slow.py: the slow tool only reads, as lookup_order does.

@id("bench-slow-lookup")
@reason("support agents may look orders up, however slowly")
permit (principal in Role::"support", action == Action::"slow_lookup", resource);
"""


@dataclass(frozen=True)
class Kind:
    name: str
    trigger: str
    agent: str
    tool: str


KINDS = {
    "model": Kind("model", "bench.slow_model", "bench-slow-model", "lookup_order"),
    "tool": Kind("tool", "bench.slow_tool", "bench-slow-tool", "slow_lookup"),
}


@dataclass
class Follower:
    """Every run's end, and every tool call's span, as one reader of the topics sees them."""

    ended: dict[str, tuple[Event, float]] = field(default_factory=dict)  # run id -> (end, observed)
    calls: dict[str, list[ActionExecuted]] = field(default_factory=dict)  # run id -> executed

    async def follow(self, client: Client) -> None:
        async with aclosing(client.subscribe("runs", "actions.results")) as records:
            async for received in records:
                event, run = received.event, (received.event.run_id if received.event else None)
                if run is None:
                    continue
                if isinstance(event, RUN_TERMINAL):
                    self.ended.setdefault(run, (event, time.monotonic()))
                elif isinstance(event, ActionExecuted):
                    self.calls.setdefault(run, []).append(event)

    async def wait(self, runs: list[str], deadline: float, label: str) -> int:
        """How many of `runs` have ended, once all have or `deadline` (monotonic) passes."""
        said = time.monotonic()
        while (done := sum(r in self.ended for r in runs)) < len(runs) and time.monotonic() < deadline:
            if time.monotonic() - said > 15:
                print(f"  {label}: {done}/{len(runs)} runs ended", flush=True)
                said = time.monotonic()
            await asyncio.sleep(0.1)
        return done


@dataclass
class Bench:
    client: Client
    follower: Follower
    http: httpx.AsyncClient
    model_url: str | None
    serial: int = 0

    def order(self) -> dict[str, Any]:
        self.serial += 1
        return {"order_id": f"S-{self.serial:07d}"}

    async def model_stats(self, reset: bool = False) -> dict[str, Any]:
        if self.model_url is None:
            return {}
        root = self.model_url.removesuffix("/v1")
        response = await (self.http.post(f"{root}/stats/reset") if reset else self.http.get(f"{root}/stats"))
        stats: dict[str, Any] = response.json()
        return stats

    async def stage(self, kind: Kind, n: int, label: str) -> dict[str, Any]:
        await self.model_stats(reset=True)
        began_at, began = datetime.now(UTC), time.monotonic()
        # The first alone: the client starts its producer on its first publish, once.
        triggers = [await self.client.publish(kind.trigger, self.order())]
        for first in range(1, n, PUBLISH_BATCH):
            batch = [self.order() for _ in range(min(PUBLISH_BATCH, n - first))]
            triggers += await asyncio.gather(*(self.client.publish(kind.trigger, d) for d in batch))
        runs = [derive_id(t.event_id, f"run:{kind.agent}") for t in triggers]
        burst = Burst(n, began_at, began, time.monotonic() - began, max(120.0, n / 5))
        await self.follower.wait(runs, began + burst.bound_s, label)
        ends = [self.follower.ended[r] for r in runs if r in self.follower.ended]
        model = await self.model_stats()
        return _summary(burst, ends) | {
            "model_max_in_flight": model.get("max_in_flight") if kind.name == "model" else None,
            "tool_max_in_flight": _most_at_once(
                [c for r in runs for c in self.follower.calls.get(r, []) if c.action.tool == kind.tool]
            ),
            "tool_attempts_max": max(
                (c.attempts for r in runs for c in self.follower.calls.get(r, [])), default=None
            ),
        }


@dataclass(frozen=True)
class Burst:
    n: int
    began_at: datetime  # wall clock, just before the first publish
    began: float  # monotonic, the same moment
    published_s: float
    bound_s: float


def _summary(burst: Burst, ends: list[tuple[Event, float]]) -> dict[str, Any]:
    n, began_at = burst.n, burst.began_at
    outcomes = Counter(type(e).__name__ for e, _ in ends)
    finished = len(ends) == n
    took = [(e.envelope.occurred_at - began_at).total_seconds() for e, _ in ends]
    seconds = max(took, default=None)
    why = Counter(
        f"{type(e).__name__}: {getattr(e, 'cause', '')}: {str(getattr(e, 'reason', ''))[:160]}"
        for e, _ in ends
        if not isinstance(e, RunCompleted)
    )
    return {
        "runs": n,
        "finished": finished,
        "ended": len(ends),
        "not_ended": n - len(ends),
        "outcomes": dict(outcomes),
        "all_completed": finished and outcomes["RunCompleted"] == n,
        "bound_s": burst.bound_s,
        "published_s": round(burst.published_s, 3),
        "seconds": round(seconds, 3) if seconds is not None else None,
        "observed_s": round(max(t for _, t in ends) - burst.began, 3) if ends else None,
        "runs_per_s": round(n / seconds, 3) if finished and seconds else None,
        "completed_per_s": round(outcomes["RunCompleted"] / seconds, 3) if finished and seconds else None,
        "run_s": {"p50": round(statistics.median(took), 3), "max": round(max(took), 3)} if took else {},
        "not_completed": dict(why.most_common(5)),
    }


def _most_at_once(calls: list[ActionExecuted]) -> int | None:
    """The most of these tool calls running at once: each ran for its duration_ms before it
    was recorded executed (one host's clock)."""
    if not calls:
        return None
    edges = []
    for c in calls:
        end = c.envelope.occurred_at
        edges += [(end - timedelta(milliseconds=c.duration_ms), 1), (end, -1)]
    running = most = 0
    for _, step in sorted(edges):
        running += step
        most = max(most, running)
    return most


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None, "all": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


async def _measure_kind(
    settings: Settings, kind: Kind, args: argparse.Namespace, model_url: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Client(settings, source="bench-slow") as client, httpx.AsyncClient(timeout=10) as http:
        follower = Follower()
        following = asyncio.create_task(follower.follow(client))
        bench = Bench(client, follower, http, model_url)
        try:
            await asyncio.sleep(1.0)  # the reader is placed before the first trigger goes out
            warm = await bench.stage(kind, WARMUP_RUNS, f"{kind.name} warm-up")
            if not warm["all_completed"]:
                out["error"] = f"warm-up runs did not all complete: {warm}"
                return out
            for n in args.counts:
                stages = []
                for repeat in range(args.repeats):
                    stage = await bench.stage(kind, n, f"{kind.name} {n} #{repeat + 1}")
                    stages.append(stage)
                    _say(kind, n, repeat, stage)
                    if not stage["finished"]:
                        break
                    await asyncio.sleep(2.0)  # the audit and the other sinks catch up
                out[str(n)] = _aggregate(stages)
                if not stages[-1]["finished"]:
                    out["error"] = f"{n} runs at once did not all end within {stages[-1]['bound_s']:.0f}s"
                    return out
        finally:
            following.cancel()
    return out


def _aggregate(stages: list[dict[str, Any]]) -> dict[str, Any]:
    def values(key: str) -> list[float]:
        return [s[key] for s in stages if s.get(key) is not None]

    return {
        "runs_per_s": _spread(values("runs_per_s")),
        "completed_per_s": _spread(values("completed_per_s")),
        "model_max_in_flight": _spread(values("model_max_in_flight")),
        "tool_max_in_flight": _spread(values("tool_max_in_flight")),
        "all_completed": all(s["all_completed"] for s in stages),
        "stages": stages,
    }


def _say(kind: Kind, n: int, repeat: int, s: dict[str, Any]) -> None:
    rate = f"{s['runs_per_s']:.1f} runs/s in {s['seconds']:.1f}s" if s["runs_per_s"] else "NOT FINISHED"
    print(
        f"{kind.name} {n} at once, #{repeat + 1}: {rate}; ended {s['ended']}/{n} {s['outcomes']}; "
        f"model in flight max {s['model_max_in_flight']}, tool {s['tool_max_in_flight']}; "
        f"published in {s['published_s']:.2f}s",
        flush=True,
    )
    for reason, count in s["not_completed"].items():
        print(f"    {count} x {reason}", flush=True)


def _pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def _model_server(home: Path, delay_s: float) -> tuple[subprocess.Popen[bytes], str]:
    """bench/slow_model.py, dying with this process (even by SIGKILL)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    argv = [sys.executable, "-m", "bench.slow_model", "--port", str(port), "--delay-s", str(delay_s)]
    proc = spawn(argv, home / "model.log", env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_answering(f"{url}/health", proc, timeout_s=30)
    except StackNotReady as exc:
        stop(proc, 5)
        raise RuntimeError(
            f"the model server did not start ({exc}):\n{(home / 'model.log').read_text()}"
        ) from None
    return proc, url


def _stack_env(home: Path, args: argparse.Namespace, model_url: str | None) -> dict[str, str]:
    env = _env(home, telemetry=False)
    config = home / "config"
    for name, text in AGENTS.items():
        (config / "agents" / name).write_text(text)
    (config / "policies" / "bench-slow.cedar").write_text(CEDAR)
    env.update(
        PYTHONPATH=_pythonpath(),  # the services import bench.slow_tools
        CHARTER_TOOL_MODULES="charter.demo.tools,bench.slow_tools",
        CHARTER_LLM_BASE_URL=model_url or "http://127.0.0.1:9/v1",
        CHARTER_LLM_MODEL="slow-stub",
        **{DELAY_ENV: str(args.delay_s)},
    )
    for name, value in (
        ("CHARTER_MAX_IN_FLIGHT", args.max_in_flight),
        ("CHARTER_TOOL_THREADS", args.tool_threads),
        ("CHARTER_LLM_MAX_CONCURRENCY", args.llm_max_concurrency),
    ):
        if value is not None:
            env[name] = str(value)
    return env


def _run_kind(kind: Kind, args: argparse.Namespace, model_url: str | None, deadline: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"charter-bench-slow-{kind.name}-"))
    stack = Stack(home, _stack_env(home, args, model_url), "--broker", args.broker)
    try:
        ready = stack.wait_ready(180 if args.broker == "kafka" else 60)
        print(f"{kind.name}: stack ready in {ready:.1f}s", flush=True)
        settings = Settings(home=home, broker=args.broker)

        async def bounded() -> dict[str, Any]:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                return await _measure_kind(settings, kind, args, model_url)

        try:
            return asyncio.run(bounded())
        except TimeoutError:
            return {"error": f"the benchmark's bound ({args.timeout_s:.0f}s) ran out"}
    finally:
        stack.close()


def _table(result: dict[str, Any]) -> None:
    print(f"\n{'kind':<6} {'at once':>8} {'runs/s median':>14} {'min-max':>13} {'completed':>10} "
          f"{'model max':>9} {'tool max':>8}")  # fmt: skip
    for kind in result["kinds"]:
        measured = result[kind]
        for n in result["counts"]:
            row = measured.get(str(n))
            if row is None:
                print(f"{kind:<6} {n:>8} {'not run':>14}")
                continue
            rate = row["runs_per_s"]
            done = sum(s["outcomes"].get("RunCompleted", 0) for s in row["stages"])
            total = sum(s["runs"] for s in row["stages"])
            spread = f"{rate['min']:.1f}-{rate['max']:.1f}" if rate["median"] is not None else "-"
            median = f"{rate['median']:.1f}" if rate["median"] is not None else "NOT FINISHED"
            most = (row["model_max_in_flight"]["max"], row["tool_max_in_flight"]["max"])
            print(f"{kind:<6} {n:>8} {median:>14} {spread:>13} {f'{done}/{total}':>10} "
                  f"{most[0] if most[0] is not None else '-':>9} {most[1] if most[1] is not None else '-':>8}")  # fmt: skip
        if "error" in measured:
            print(f"{kind}: {measured['error']}")


def _args() -> argparse.Namespace:
    def ints(s: str) -> list[int]:
        return [int(c) for c in s.split(",") if c]

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kind", type=lambda s: [k for k in s.split(",") if k], default=["model", "tool"])
    parser.add_argument("--counts", type=ints, default=[100, 500, 1000], help="runs started at once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--delay-s", type=float, default=1.0, help="the model's answer time and the tool's")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--max-in-flight", type=int, default=None, help="CHARTER_MAX_IN_FLIGHT")
    parser.add_argument("--tool-threads", type=int, default=None, help="CHARTER_TOOL_THREADS")
    parser.add_argument("--llm-max-concurrency", type=int, default=None, help="CHARTER_LLM_MAX_CONCURRENCY")
    parser.add_argument("--timeout-s", type=float, default=5400.0, help="bound on the whole benchmark")
    parser.add_argument("--out", type=Path, default=RESULTS / "slow.json")
    args = parser.parse_args()
    unknown = [k for k in args.kind if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {unknown}; the kinds are {', '.join(KINDS)}")
    return args


def main() -> None:
    args = _args()
    deadline = time.monotonic() + args.timeout_s
    home = Path(tempfile.mkdtemp(prefix="charter-bench-slow-"))
    model, model_url = _model_server(home, args.delay_s) if "model" in args.kind else (None, None)
    measured: dict[str, Any] = {}
    try:
        for name in args.kind:
            measured[name] = _run_kind(KINDS[name], args, model_url, deadline)
    finally:
        if model is not None:
            stop(model, 5)
        shutil.rmtree(home, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "broker": args.broker,
        "delay_s": args.delay_s,
        "counts": args.counts,
        "repeats": args.repeats,
        "kinds": args.kind,
        "settings": {
            "max_in_flight": args.max_in_flight,
            "tool_threads": args.tool_threads,
            "llm_max_concurrency": args.llm_max_concurrency,
            "stage_bound_s": "max(120, N/5)",
        },
        **measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _table(result)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
