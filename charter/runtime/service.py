"""The process around a service: settings, logs, traces, the producer, the consumer loop, and a
clean stop on SIGTERM. `services/<name>/__main__.py` hands a factory to `run`."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry

from charter import broker, metrics_server
from charter.bus import Bus
from charter.config import Settings
from charter.errors import ConfigError
from charter.killswitch import ControlFollower
from charter.runtime.consumer import BatchHandler, ConsumerLoop, Mode
from charter.stack import readiness
from charter.telemetry import setup_logging, setup_tracing

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What a service is made of, once built."""

    topics: Sequence[str]
    handle_batch: BatchHandler
    background: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = ()
    close: Callable[[], None] = field(default=lambda: None)
    # False for a service that writes nothing to Kafka: its offsets need no transaction.
    transactional: bool = True
    # Follows `control` (kill switches); the service is ready only once this has joined too.
    control: ControlFollower | None = None
    # More things the service must have done before it is ready (say, an HTTP server listening).
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    # Figures the service keeps in a registry of its own, served with the process's.
    registries: Sequence[CollectorRegistry] = ()
    # A sink (off the hot path: the audit, approvals) fetches less often and takes more at a
    # time: the broker answers fewer fetches, and each batch costs the service less per record.
    sink: bool = False
    # How records are handed over (charter.runtime.consumer.Mode): in order, a batch at a time,
    # or by key, runs side by side.
    mode: Mode = Mode.ORDERED


Factory = Callable[[Settings, Bus], Awaitable[Parts]]


# A record makes and frees thousands of objects, nearly all freed by their reference counts;
# the cycle collector's default (a young collection every 700 allocations) ran hundreds of
# times a second for little. Measured on the whole hot path in one process: 5% less CPU.
GC_THRESHOLDS = (50_000, 20, 20)


def settle_gc() -> None:
    """Once start-up is done: what it loaded (policies, agents, schemas) lives as long as the
    process, so it is kept out of the collector's generations, which shortens every later
    collection; and collections come less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def group_id(settings: Settings, service: str) -> str:
    return f"{settings.topic_prefix}{service}"


def service_bus(settings: Settings, service: str) -> Bus:
    """The service's producer: transactional where the broker has transactions. The id is stable
    across restarts of the same replica, so a restarted process fences its dead predecessor."""
    group = group_id(settings, service)
    return Bus(settings, client_id=group, transactional_id=f"{group}-{settings.instance}")


async def serve(name: str, settings: Settings, factory: Factory, stop: asyncio.Event) -> None:
    bus = service_bus(settings, name)
    await bus.start()
    try:
        parts = await factory(settings, bus)
    except BaseException:
        await bus.stop()
        raise
    settle_gc()
    assigned = {"main": False}

    def joined(what: str) -> None:
        assigned[what] = True
        if all(assigned.values()):
            readiness.mark(settings, name)

    loop = ConsumerLoop(
        settings,
        service=name,
        group_id=group_id(settings, name),
        topics=parts.topics,
        handle_batch=parts.handle_batch,
        bus=bus,
        transactional=parts.transactional,
        mode=parts.mode,
        on_assigned=lambda: joined("main"),
        fetch_max_wait_ms=settings.sink_fetch_max_wait_ms if parts.sink else None,
        pace_s=settings.sink_fetch_max_wait_ms / 1000 if parts.sink else 0.0,
    )
    # The metrics endpoint listens before anything joins a group: a port already taken stops
    # the process at once, with the reason, rather than mid-start.
    exporter = metrics_server.server(settings, name, parts.registries)
    if exporter is not None:
        exporting = asyncio.create_task(exporter.run(stop), name=f"{name}-metrics")
        listening = asyncio.create_task(exporter.listening.wait())
        await asyncio.wait({exporting, listening}, return_when=asyncio.FIRST_COMPLETED)
        if exporting.done():
            listening.cancel()
            parts.close()
            await bus.stop()
            exporting.result()
    tasks = [asyncio.create_task(loop.run(stop), name=f"{name}-consumer")]
    if parts.control is not None:
        assigned["control"] = False
        following = parts.control.run(stop, on_assigned=lambda: joined("control"))
        tasks.append(asyncio.create_task(following, name=f"{name}-control"))
    tasks += [asyncio.create_task(task(stop), name=f"{name}-{task.__name__}") for task in parts.background]
    if exporter is not None:
        tasks.append(exporting)
    for gate, event in parts.gates.items():
        assigned[gate] = False
        tasks.append(asyncio.create_task(_gate(gate, event, joined), name=f"{name}-{gate}-ready"))
    try:
        # The first task to fail takes the process down; the supervisor restarts it.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        parts.close()
        await bus.stop()


async def _gate(gate: str, event: asyncio.Event, joined: Callable[[str], None]) -> None:
    await event.wait()
    joined(gate)


def run(name: str, factory: Factory) -> None:
    settings = Settings()
    setup_logging(name, settings.log_level)
    provider = setup_tracing(name, settings)
    log.info("starting: %s", broker.capabilities(settings).describe())
    # A file left by a predecessor killed with no time to clear it (the same pid, 1, in a
    # restarted container) must not pass for this process being ready.
    readiness.clear(settings, name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        await serve(name, settings, factory, stop)

    try:
        # uvloop: the same asyncio API on libuv, measurably cheaper per record sent and fetched.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    finally:
        readiness.clear(settings, name)
        provider.shutdown()
    log.info("stopped")
