"""Each service's own CPU per governed action, in one process, without a broker.

    .venv/bin/python -m bench.hotpath [--actions 3000] [--batch 200] [--repeats 3] [--telemetry]

Runs the five services' batch handlers as their consumers call them (the planner's batches as
its faust agent hands them over, policy's, the executor's, the approvals' and the audit's), on
their real SQLite stores, with the bench-lookup agent of the end-to-end benchmark: a trigger,
its run started and its one action proposed, decided, executed and the run completed. Each
handler's outputs are the next ones' inputs, in batches of `--batch` (the audit's of 500). The
producer is a recorder: what Kafka costs is the end-to-end benchmark's to measure
(bench/e2e), and this one isolates the services' own work, so that a change to it can be
measured in seconds. CPU time of each handler, per action, median over the repeats; results go
to bench/results/hotpath[-telemetry].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.e2e.stack import configure
from charter import bus as bus_module
from charter import serde, signing, telemetry
from charter.bus import Outgoing
from charter.clock import SystemClock, new_id
from charter.config import Settings
from charter.events import Event, RunCompleted, TriggerReceived
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Pipeline, Prepared, publish
from charter.store import make_engine
from services.approvals.service import build as approvals
from services.audit.service import build as audit
from services.executor.service import build as executor
from services.planner import service as planner
from services.planner import store as runs
from services.policy.service import build as policy

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("planner", "policy", "executor", "approvals", "audit")
READS = {
    "planner": {"triggers", "actions.results", "actions.rejected"},
    "policy": {"actions.proposed", "actions.approved"},
    "executor": {"actions.approved"},
    "approvals": {"runs", "approvals.requested", "approvals.decided"},
}
AUDIT_BATCH = 500
Sent = tuple[Outgoing, list[tuple[str, bytes]]]
BatchHandler = Callable[[list[Delivery]], Awaitable[Sequence[Prepared]]]


class Recorder:
    """The producer's part: routes and encodes as the bus does, and keeps what was sent."""

    transactional = False
    running = True
    sent_in_transaction = 0

    def __init__(self, settings: Settings, origin: str) -> None:
        self.settings = settings
        self.origin = (bus_module.ORIGIN_HEADER, f"{origin}@bench".encode())
        self.sent: list[Sent] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def send(self, event: Event) -> asyncio.Future[Any]:
        self.sent.append((bus_module.route(self.settings, event), [*telemetry.inject(), self.origin]))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def publish(self, event: Event) -> None:
        await self.send(event)


def _settings(home: Path, telemetry_on: bool) -> Settings:
    config = configure(home)
    return Settings(
        home=home,
        agents_dir=config / "agents",
        policies_dir=config / "policies",
        trace_exporter="file" if telemetry_on else "none",
        metrics_port=0,
    )


async def _handlers(settings: Settings) -> tuple[dict[str, BatchHandler], dict[str, Recorder]]:
    signing.ensure_keys(settings.keys)
    recorders = {name: Recorder(settings, f"{settings.topic_prefix}{name}") for name in SERVICES}
    engine = make_engine(settings.database_url_for("planner"))
    runs.create(engine)
    plans = planner.Planner(settings, engine, SystemClock(), planner._model_client(settings))
    pipeline = Pipeline("planner", recorders["planner"], plans.handle, SystemClock())  # type: ignore[arg-type]

    async def plan(deliveries: list[Delivery]) -> Sequence[Prepared]:
        return await plans.prepare_batch(pipeline, deliveries)

    handlers: dict[str, BatchHandler] = {"planner": plan}
    for name, build in (
        ("policy", policy),
        ("executor", executor),
        ("approvals", approvals),
        ("audit", audit),
    ):
        parts = await build(settings, recorders[name])  # type: ignore[arg-type]
        handlers[name] = parts.handle_batch
    return handlers, recorders


def _trigger(settings: Settings, n: int) -> Sent:
    event_id = new_id()
    trigger = TriggerReceived.create(
        event_id=event_id,
        now=SystemClock().now(),
        tenant=settings.tenant,
        correlation_id=event_id,
        name="bench.lookup",
        data={"order_id": f"A-{1000 + n}"},
        source="bench",
    )
    return bus_module.route(settings, trigger), [*telemetry.inject()]


class Flow:
    """Records between the services: each handler's outputs wait for the ones that read them."""

    def __init__(self, settings: Settings, handlers: dict[str, BatchHandler], recorders: dict[str, Recorder]):
        self.settings = settings
        self.handlers = handlers
        self.recorders = recorders
        self.waiting: dict[str, list[Sent]] = {name: [] for name in SERVICES}
        self.offsets: Counter[str] = Counter()
        self.cpu_s: dict[str, float] = dict.fromkeys(SERVICES, 0.0)
        self.completed = 0

    def deliver(self, sent: Sequence[Sent]) -> None:
        for out, headers in sent:
            topic = out.topic.removeprefix(self.settings.topic_prefix)
            if topic == "runs" and serde.event_type(out.value) == RunCompleted.__name__:
                self.completed += 1
            for name in SERVICES:
                if name == "audit" or topic in READS[name]:
                    self.waiting[name].append((out, headers))

    async def drain(self, batch: int) -> None:
        """Hand every service what waits for it, batch by batch, until nothing waits."""
        while any(self.waiting.values()):
            for name in SERVICES:
                size = AUDIT_BATCH if name == "audit" else batch
                items, self.waiting[name] = self.waiting[name], []
                for first in range(0, len(items), size):
                    await self._handle(name, items[first : first + size])

    async def _handle(self, name: str, items: Sequence[Sent]) -> None:
        deliveries = []
        for out, headers in items:
            self.offsets[out.topic] += 1
            deliveries.append(
                Delivery(out.topic, 0, self.offsets[out.topic], out.key, out.value, tuple(headers), 0)
            )
        self.recorders[name].sent = []
        began = time.process_time()
        prepared = [await p.settled() for p in await self.handlers[name](deliveries)]
        await publish(self.recorders[name], prepared)  # type: ignore[arg-type]
        self.cpu_s[name] += time.process_time() - began
        self.deliver(self.recorders[name].sent)


async def _run(settings: Settings, actions: int, batch: int) -> dict[str, float]:
    flow = Flow(settings, *await _handlers(settings))
    for start in range(0, actions, batch):
        flow.deliver([_trigger(settings, n) for n in range(start, min(actions, start + batch))])
        await flow.drain(batch)
    if flow.completed != actions:
        raise RuntimeError(f"{flow.completed} of {actions} runs completed")
    return {name: flow.cpu_s[name] * 1000 / actions for name in SERVICES}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--actions", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--telemetry", action="store_true", help="traces to file, as the product's default")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {name: [] for name in SERVICES}
    with tempfile.TemporaryDirectory(prefix="charter-hotpath-") as root:
        # One tracer for the process (OpenTelemetry allows one), writing under the outer home.
        telemetry.setup_tracing("hotpath", _settings(Path(root), args.telemetry))
        for repeat in range(args.repeats):
            settings = _settings(Path(root) / f"run-{repeat}", args.telemetry)
            for name, ms in asyncio.run(_run(settings, args.actions, args.batch)).items():
                figures[name].append(ms)
    result = {name: round(statistics.median(values), 3) for name, values in figures.items()}
    result["total"] = round(sum(result.values()), 3)
    out = {
        "actions": args.actions,
        "batch": args.batch,
        "repeats": args.repeats,
        "telemetry": args.telemetry,
        "cpu_ms_per_action": result,
    }
    name = "hotpath-telemetry.json" if args.telemetry else "hotpath.json"
    (REPO / "bench" / "results" / name).write_text(json.dumps(out, indent=2) + "\n")
    for name, ms in result.items():
        print(f"{name:<10} {ms:6.3f} ms of CPU per action")


if __name__ == "__main__":
    main()
