"""What the broker can do, and the client settings that follow from it.

Capabilities are configuration (CHARTER_BROKER), never guessed: Apache Kafka gets idempotent
producers; the embedded Tansu broker has no InitProducerId, so it gets plain `acks=all`
producers and says so at start. Timing settings are the ones measured in BROKER.md: a 6 s
session (Tansu holds a join for half of it) and a short fetch wait (Tansu does not wake a
waiting fetch when data arrives, so the wait is the latency floor of every hop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.producer import sender as aiokafka_sender

from charter.config import BrokerKind, Settings


@dataclass(frozen=True)
class Capabilities:
    kind: BrokerKind
    idempotent_producer: bool
    transactions: bool

    def describe(self) -> str:
        idempotence = "on" if self.idempotent_producer else "off (the broker has no InitProducerId)"
        if self.transactions:
            transactions = "on: outputs and input offsets commit together; consumers read committed"
        else:
            transactions = "unavailable on this broker: outputs are at least once, deduplicated by event id"
        return f"broker={self.kind}: acks=all, idempotent producer {idempotence}; transactions {transactions}"


CAPABILITIES: dict[BrokerKind, Capabilities] = {
    "tansu": Capabilities("tansu", idempotent_producer=False, transactions=False),
    "kafka": Capabilities("kafka", idempotent_producer=True, transactions=True),
}


def capabilities(settings: Settings) -> Capabilities:
    return CAPABILITIES[settings.broker_kind]


# aiokafka waits a fixed 20 ms before retrying AddPartitionsToTxn refused with
# CONCURRENT_TRANSACTIONS, which Kafka answers while it still writes the previous transaction's
# markers (KAFKA-5477). Back-to-back transactions, one per batch, hit it every time, and the
# markers take a few milliseconds on a nearby broker: 2 ms retries halve a transaction's cost
# (measured: 37 ms to 16 ms per batch). aiokafka has no setting for it; the pin in pyproject.toml
# and tests/unit/test_broker.py keep this honest across upgrades.
CONCURRENT_TRANSACTIONS_RETRY_S = 0.002


def tune_transactions() -> None:
    aiokafka_sender.BACKOFF_OVERRIDE = CONCURRENT_TRANSACTIONS_RETRY_S


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    caps = capabilities(settings)
    return {
        "bootstrap_servers": settings.bootstrap(),
        "acks": "all",
        "enable_idempotence": caps.idempotent_producer,
        "linger_ms": settings.producer_linger_ms,
        "max_request_size": settings.max_message_bytes,
    }


def consumer_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap(),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "max_partition_fetch_bytes": max(settings.max_message_bytes, 1_048_576),
        # Where outputs are written in transactions, nobody may act on an aborted one. (Tansu's
        # read_committed is broken, and it has no transactions to hide anyway.)
        "isolation_level": "read_committed" if capabilities(settings).transactions else "read_uncommitted",
    }
