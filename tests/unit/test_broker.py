"""Broker capabilities are configuration: what each broker kind turns on."""

from charter import broker
from charter.config import Settings


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
