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
