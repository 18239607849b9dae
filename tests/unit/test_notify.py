"""Webhook notifications: owed in the store, delivered with retries, signed, never lost."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from charter.clock import FixedClock
from charter.config import Settings
from charter.events import ApprovalRequested
from services.approvals import notify
from services.approvals import store as approvals
from tests.factories import NOW, one_of_each

REQUEST = next(e for e in one_of_each() if isinstance(e, ApprovalRequested))


class Receiver:
    """A webhook receiver that fails its first `failures` calls, and keeps what it got."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(503 if len(receiver.calls) <= receiver.failures else 204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.server.shutdown()
    r.server.server_close()


def owe(engine: Engine, clock: FixedClock) -> None:
    approvals.create(engine)
    payload = notify.approval_requested(REQUEST, NOW + timedelta(hours=24), "https://charter.example.com")
    with engine.begin() as conn:
        notify.enqueue(conn, "n-1", payload, clock.now())
        notify.enqueue(conn, "n-1", payload, clock.now())  # a redelivered event owes nothing more


async def deliver_all(notifier: notify.Notifier, clock: FixedClock, rounds: int) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(rounds):
            while await notifier.deliver_one(http):
                pass
            clock.advance(notify.BACKOFF.max_delay_s)


def test_a_notification_is_retried_until_delivered_and_signed(
    engine: Engine, clock: FixedClock, receiver: Receiver
) -> None:
    owe(engine, clock)
    settings = Settings(webhook_url=receiver.url, webhook_secret=SecretStr("s3cret"))
    notifier = notify.Notifier(settings, engine, clock)
    asyncio.run(deliver_all(notifier, clock, rounds=4))
    assert len(receiver.calls) == 3  # two 503s, then delivered; never again after that
    headers, body = receiver.calls[-1]
    assert headers["X-Charter-Event"] == "approval.requested"
    assert headers["X-Charter-Delivery"] == "n-1"
    assert headers["X-Charter-Signature"] == notify.signature("s3cret", body)
    sent = json.loads(body)
    assert sent["link"] == f"https://charter.example.com/console/approvals/{REQUEST.approval_id}"
    assert (sent["tool"], sent["roles"], sent["approvals_required"]) == ("issue_refund", ["finance"], 2)
    with engine.connect() as conn:
        [row] = notify.pending_deliveries(conn)
        assert notify.counts(conn) == {"delivered": 1, "failed": 0, "owed": 0}
    assert row["attempts"] == 3


def test_a_receiver_that_never_answers_gets_a_bounded_number_of_tries(
    engine: Engine, clock: FixedClock, tmp_path: Path
) -> None:
    owe(engine, clock)
    notifier = notify.Notifier(Settings(webhook_url="http://127.0.0.1:9/closed"), engine, clock)
    asyncio.run(deliver_all(notifier, clock, rounds=notify.MAX_ATTEMPTS + 3))
    with engine.connect() as conn:
        [row] = notify.pending_deliveries(conn)
        assert notify.counts(conn) == {"delivered": 0, "failed": 1, "owed": 0}
    assert row["attempts"] == notify.MAX_ATTEMPTS
    assert "ConnectError" in row["last_error"]


def test_a_retry_waits_longer_each_time() -> None:
    delays = [notify.BACKOFF.delay(n) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[0] == 1.0
    assert delays[-1] == notify.BACKOFF.max_delay_s
