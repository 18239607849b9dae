"""What the reasoning tier costs beyond the model itself: model-planned runs against playbook runs.

    .venv/bin/python bench/llm.py [--runs 20] [--burst 30] [--repeats 3]

Starts the embedded stack with a model server that answers at once (tests/e2e/model_server.py,
the tests' scripted stand-in), so what is measured is Charter, not a model. Two agents do the
same three governed actions (look an order up, refund 5, notify the customer): support-refunds
by its playbook, support-assistant planned by the model (four model calls a run). For each:
  - latency: `--runs` runs one after another, trigger to RunCompleted (the services' clocks);
  - throughput: `--burst` runs published at once, runs completed per second.
Medians over `--repeats`. Results go to bench/results/llm.json. The policies are the demo's,
with rate limits wide enough for the bursts.
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
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

from charter.client import Client
from charter.clock import derive_id
from charter.config import Settings
from charter.events import RUN_TERMINAL, RunCompleted
from charter.stack.harness import StackProcess, wait_answering
from charter.stack.processes import free_port

REPO = Path(__file__).resolve().parent.parent
LIMITS = """defaults:
  max_steps: 20
  budget_per_run: 50
  budget_per_day: 10000000
  rate: {count: 1000000, per_seconds: 60}
tools:
  issue_refund: {rate: {count: 1000000, per_seconds: 60}, budget_per_day: 10000000}
"""


def _refund(i: int) -> dict[str, Any]:
    return {"order_id": f"P-{i:06d}", "amount": 5}


def _ticket(i: int) -> dict[str, Any]:
    return {"script": "multi", "order_id": f"M-{i:06d}", "amount": 5}


KINDS: dict[str, tuple[str, str, Callable[[int], dict[str, Any]]]] = {
    "playbook": ("support.refund_requested", "support-refunds", _refund),
    "model": ("support.ticket_opened", "support-assistant", _ticket),
}


def _model_server(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "timeout",
            "-s",
            "KILL",
            "3600",
            sys.executable,
            "-m",
            "tests.e2e.model_server",
            "--port",
            str(port),
            "--log",
            str(log),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    wait_answering(f"{url}/health", proc, timeout_s=20)
    return proc, url


def _env(home: Path, model_url: str) -> dict[str, str]:
    policies = home / "policies"
    shutil.copytree(REPO / "policies", policies)
    (policies / "limits.yaml").write_text(LIMITS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env.update(
        CHARTER_HOME=str(home),
        CHARTER_AGENTS_DIR=str(REPO / "agents"),
        CHARTER_POLICIES_DIR=str(policies),
        CHARTER_TRACE_EXPORTER="none",
        CHARTER_LLM_BASE_URL=model_url,
        CHARTER_LLM_MODEL="stub",
    )
    return env


class Runner:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.ended: dict[str, asyncio.Future[Any]] = {}
        self.serial = 0

    async def follow(self) -> None:
        async with aclosing(self.client.subscribe("runs")) as events:
            async for received in events:
                event = received.event
                waiting = self.ended.get(event.run_id or "") if isinstance(event, RUN_TERMINAL) else None
                if waiting is not None and not waiting.done():
                    waiting.set_result(event)

    async def start(self, kind: str) -> tuple[Any, asyncio.Future[Any]]:
        name, agent, data = KINDS[kind]
        self.serial += 1
        trigger = await self.client.publish(name, data(self.serial))
        run = derive_id(trigger.event_id, f"run:{agent}")
        self.ended[run] = asyncio.get_running_loop().create_future()
        return trigger, self.ended[run]

    async def latency(self, kind: str, runs: int) -> float:
        took = []
        for _ in range(runs):
            trigger, ended = await self.start(kind)
            end = await asyncio.wait_for(ended, 60)
            assert isinstance(end, RunCompleted), end
            took.append((end.envelope.occurred_at - trigger.envelope.occurred_at).total_seconds() * 1000)
        return float(statistics.median(took))

    async def throughput(self, kind: str, burst: int) -> float:
        began = time.perf_counter()
        futures = [(await self.start(kind))[1] for _ in range(burst)]
        ends = await asyncio.wait_for(asyncio.gather(*futures), 300)
        assert all(isinstance(e, RunCompleted) for e in ends), [
            e for e in ends if not isinstance(e, RunCompleted)
        ]
        return burst / (time.perf_counter() - began)


async def _measure(settings: Settings, runs: int, burst: int, repeats: int) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {k: {"latency_ms": [], "runs_per_s": []} for k in KINDS}
    async with Client(settings, source="bench") as client:
        runner = Runner(client)
        follower = asyncio.create_task(runner.follow())
        await asyncio.sleep(1.0)
        await runner.latency("playbook", 3)  # warm up both paths
        await runner.latency("model", 3)
        for n in range(repeats):
            for kind in KINDS:
                results[kind]["latency_ms"].append(await runner.latency(kind, runs))
                results[kind]["runs_per_s"].append(await runner.throughput(kind, burst))
                print(f"repeat {n + 1} {kind}: {results[kind]['latency_ms'][-1]:.0f} ms median, "
                      f"{results[kind]['runs_per_s'][-1]:.1f} runs/s")  # fmt: skip
        follower.cancel()
    return {
        kind: {metric: {"median": statistics.median(v), "all": v} for metric, v in values.items()}
        for kind, values in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="charter-bench-llm-"))
    model, url = _model_server(home / "model-requests.jsonl")
    stack = StackProcess(home, _env(home, url))
    try:
        stack.wait_ready()
        measured = asyncio.run(_measure(Settings(home=home), args.runs, args.burst, args.repeats))
    finally:
        stack.stop()
        model.terminate()  # `timeout` passes SIGTERM on to the server
        model.wait(10)
        shutil.rmtree(home, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": args.runs,
        "burst": args.burst,
        "repeats": args.repeats,
        **measured,
    }
    (REPO / "bench" / "results" / "llm.json").write_text(json.dumps(result, indent=2) + "\n")
    for kind, values in measured.items():
        print(
            f"{kind}: trigger to completed median {values['latency_ms']['median']:.0f} ms; "
            f"{values['runs_per_s']['median']:.1f} runs/s in bursts of {args.burst}"
        )


if __name__ == "__main__":
    main()
