"""charter up | topics"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from charter import topics
from charter.config import BrokerKind, Settings
from charter.demo import shipped
from charter.stack.up import create_topics
from charter.stack.up import up as run_up


def up(
    demo: Annotated[
        bool, typer.Option("--demo", help="Publish the demo events and print how each run ended.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Stop the stack once it is ready (and the demo has run).")
    ] = False,
    broker: Annotated[
        BrokerKind | None,
        typer.Option(
            "--broker",
            help="The local broker to start: kafka (Apache Kafka on Java 17, fetched from Maven Central "
            "once; data kept under the home; the default where Java 17 runs) or tansu (embedded, in "
            "memory, no retention; the default elsewhere). Default: CHARTER_BROKER.",
        ),
    ] = None,
) -> None:
    """Start the whole stack: a local broker (unless CHARTER_BOOTSTRAP_SERVERS is set), every
    topic, and the five services, supervised. Ctrl-C stops it all. With --demo, the agents,
    policies and users file the settings name are the demo's own where they do not exist."""

    def say(line: str) -> None:
        print(line, flush=True)

    settings = shipped.filled_in(Settings(), say) if demo else Settings()
    raise typer.Exit(run_up(settings, demo=demo, once=once, broker_kind=broker, say=say))


def topics_ensure() -> None:
    """Create every topic of the contract that is missing, DLQs included, on the configured broker
    (CHARTER_BOOTSTRAP_SERVERS), and check the partition counts of those that exist. For
    production, where the services run without `charter up`."""
    settings = Settings()
    created = asyncio.run(create_topics(settings))
    names = ", ".join(created) or "none"
    print(f"{len(topics.specs(settings))} topics ready on {settings.bootstrap()}; created: {names}")
