"""Broker capabilities are configuration: what each broker kind turns on."""

import asyncio
import time

from charter import broker
from charter.config import Settings
from charter.runtime.consumer import ConsumerLoop
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Prepared


def test_capabilities_follow_the_configured_broker() -> None:
    tansu = broker.capabilities(Settings(bootstrap_servers="x:1", broker="tansu"))
    kafka = broker.capabilities(Settings(bootstrap_servers="x:1"))
    assert (tansu.idempotent_producer, kafka.idempotent_producer) == (False, True)
    assert broker.producer_kwargs(Settings(bootstrap_servers="x:1"))["enable_idempotence"] is True
    assert (
        broker.producer_kwargs(Settings(bootstrap_servers="x:1", broker="tansu"))["enable_idempotence"]
        is False
    )
    assert broker.producer_kwargs(Settings(bootstrap_servers="x:1"))["acks"] == "all"
    assert "idempotent producer on" in kafka.describe()


def test_the_transaction_retry_tuning_still_applies_to_aiokafka() -> None:
    from aiokafka.producer import sender

    assert hasattr(sender, "BACKOFF_OVERRIDE"), "aiokafka changed: revisit charter.broker.tune_transactions"
    broker.tune_transactions()
    assert sender.BACKOFF_OVERRIDE == broker.CONCURRENT_TRANSACTIONS_RETRY_S


def test_consumers_read_committed_only_where_transactions_exist() -> None:
    assert broker.consumer_kwargs(Settings(bootstrap_servers="x:1"))["isolation_level"] == "read_committed"
    tansu = Settings(bootstrap_servers="x:1", broker="tansu")
    assert broker.consumer_kwargs(tansu)["isolation_level"] == "read_uncommitted"


def test_a_sink_keeping_up_takes_its_next_batch_no_sooner_than_its_pace() -> None:
    loop = ConsumerLoop(Settings(), group_id="g", topics=["t"], handle_batch=_nothing, pace_s=0.2)

    async def elapsed(began_ago: float, stop: asyncio.Event) -> float:
        start = time.monotonic()
        await loop._paced(start - began_ago, stop)
        return time.monotonic() - start

    stopped = asyncio.Event()
    stopped.set()
    assert 0.15 <= asyncio.run(elapsed(0.0, asyncio.Event())) < 0.5  # the rest of its pace
    assert asyncio.run(elapsed(1.0, asyncio.Event())) < 0.05  # the pace has passed already
    assert asyncio.run(elapsed(0.0, stopped)) < 0.05  # a stop does not wait for the pace


async def _nothing(_deliveries: list[Delivery]) -> list[Prepared]:
    return []
