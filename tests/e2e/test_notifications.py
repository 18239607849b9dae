"""A stack on PostgreSQL with a webhook receiver: people are told when an approval waits and
when a run escalates (retried until the receiver answers), and a pending approval outlives
the approvals service that recorded it. (On SQLite the same restart is in test_lifecycle.py.)"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from charter.events import RunCompleted, RunEscalated
from tests.e2e.conftest import (
    Stack,
    approve_when_up,
    run_id,
    running,
    wait_approval,
    wait_restarted,
    wait_run_end,
)
from tests.e2e.test_approvals import DEADLINE, policy

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.tansu]
SECRET = "webhook-test-secret"
PUBLIC = "https://charter.example.com"
REFUNDS = "support-refunds"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """An HTTP endpoint that fails the first attempt of every delivery, then accepts it."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            key = headers["X-Charter-Delivery"]
            seen = any(d.headers["X-Charter-Delivery"] == key for d in self.deliveries)
            answered = 200 if seen else 503
            self.deliveries.append(Delivery(headers, body, answered))
            return answered

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> list[Delivery]:
        """Every attempt at the first delivery whose body satisfies `predicate`, once accepted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                accepted = [d for d in self.deliveries if d.answered == 200 and predicate(d.payload)]
                if accepted:
                    key = accepted[0].headers["X-Charter-Delivery"]
                    return [d for d in self.deliveries if d.headers["X-Charter-Delivery"] == key]
            time.sleep(0.1)
        raise AssertionError(f"no such notification; received {[d.payload for d in self.deliveries]}")


@contextmanager
def receiver() -> Iterator[Receiver]:
    hook = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(hook.record(dict(self.headers.items()), body))
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/charter"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def _signed(delivery: Delivery) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(delivery.headers["X-Charter-Signature"], expected)


@pytest.fixture
def stack_on_postgres(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Stack, Receiver]]:
    with (
        receiver() as hook,
        running(
            tmp_path / "home",
            CHARTER_DATABASE_URL=postgres_url,
            CHARTER_WEBHOOK_URL=hook.url,
            CHARTER_WEBHOOK_SECRET=SECRET,
            CHARTER_PUBLIC_URL=PUBLIC,
        ) as stack,
    ):
        yield stack, hook


def test_a_pending_approval_survives_a_restart_and_people_are_notified(
    stack_on_postgres: tuple[Stack, Receiver],
) -> None:
    stack, hook = stack_on_postgres
    run = run_id(stack.publish("support.refund_requested", {"order_id": "N-1001", "amount": 2500}), REFUNDS)
    request = wait_approval(stack, run)

    # The approver is told, with a link to the decision in the console; the receiver's first
    # refusal is retried with the same delivery id, and every attempt is signed.
    attempts = hook.wait(lambda p: p["type"] == "approval.requested" and p["run_id"] == run)
    assert [a.answered for a in attempts] == [503, 200]
    assert all(_signed(a) for a in attempts)
    note = attempts[-1].payload
    assert note["link"] == f"{PUBLIC}/console/approvals/{request.approval_id}"
    assert (note["tool"], note["parameters"]["amount"], note["roles"]) == ("issue_refund", 2500, ["finance"])
    assert SECRET not in attempts[-1].body.decode()

    # Killed while the approval waits: the new process has it, from PostgreSQL.
    old = stack.service_pid("approvals")
    os.kill(old, signal.SIGKILL)
    wait_restarted(stack, "approvals", old)
    approve_when_up(stack, request.approval_id)
    assert isinstance(wait_run_end(stack, run, timeout=60), RunCompleted)
    assert f"approvals exited with code -{signal.SIGKILL.value}; restarting" in stack.text()

    # An approval nobody decides: the run escalates, and people are told that too.
    with policy(stack, "deadline.cedar", DEADLINE):
        late = run_id(
            stack.publish("support.refund_requested", {"order_id": "N-1002", "amount": 1313}), REFUNDS
        )
        assert isinstance(wait_run_end(stack, late), RunEscalated)
    escalated = hook.wait(lambda p: p["type"] == "run.escalated" and p["run_id"] == late)[-1].payload
    assert escalated["cause"] == "approval_expired"
    assert escalated["link"] == f"{PUBLIC}/console/runs/{late}"
