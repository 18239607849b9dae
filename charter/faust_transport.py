"""faust's aiokafka transport, with the fetch wait Charter configures instead of faust's 1.5 s.

faust hard-codes `fetch_max_wait_ms=1500` for its worker consumer. On Tansu, which does not
wake a waiting fetch when data arrives, that is 1.5 s of latency per hop. faust resolves its
transport from the broker URL's scheme, and third-party transports register under the
`faust.transports` entry point; this one is registered as `charter` in pyproject.toml, so the
planner connects with `charter://host:port`.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from charter.config import Settings


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when it builds its fetcher in start(), which comes after.
        consumer._fetch_max_wait_ms = Settings().fetch_max_wait_ms
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
