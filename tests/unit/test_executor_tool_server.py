"""The counting tool server the executor's chaos test relies on (tests/e2e/tool_server.py).

Its counts are the chaos test's evidence, so they must count only what a real system would have
done. httpx writes a request's headers and its body separately; the executor SIGKILLed between the
two leaves the server a request with no body. The server once took that for `{}`, counted a charge,
failed to build its answer and so stored none, and counted the executor's retry with the same key
as a second charge: `charged[key] == 2` with the executor right all along.
"""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.e2e.tool_server import Ledger, serving

BODY = json.dumps({"order": "w1-3", "amount": 4}).encode()


def _cut_short(url: str, path: str, key: str) -> None:
    """What the server sees from a caller killed after its headers and before its body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nIdempotency-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
        )


def _wait_calls(ledger: Ledger, path: str, key: str, n: int) -> None:
    deadline = time.monotonic() + 10
    while ledger.calls[(path, key)] < n:
        assert time.monotonic() < deadline, ledger.calls
        time.sleep(0.01)


def test_a_charge_cut_short_then_retried_is_one_effect() -> None:
    ledger = Ledger()
    with serving(ledger) as url:
        _cut_short(url, "/charge", "r:0")
        _wait_calls(ledger, "/charge", "r:0", 1)
        retried = httpx.post(f"{url}/charge", content=BODY, headers={"Idempotency-Key": "r:0"})
        again = httpx.post(f"{url}/charge", content=BODY, headers={"Idempotency-Key": "r:0"})
    assert retried.json() == again.json() == {"receipt": "charge-r:0", "amount": 4}
    assert ledger.calls[("/charge", "r:0")] == 3
    assert ledger.effects[("/charge", "r:0")] == 1


def test_a_ship_cut_short_is_a_call_and_no_effect() -> None:
    ledger = Ledger()
    with serving(ledger) as url:
        _cut_short(url, "/ship", "r:1")
        _wait_calls(ledger, "/ship", "r:1", 1)
    assert ledger.calls[("/ship", "r:1")] == 1  # still seen as a call: a second one would be caught
    assert ledger.effects[("/ship", "r:1")] == 0


def test_the_server_still_counts_what_it_should() -> None:
    """The fix must not blunt the evidence: a repeated ship is two effects, a repeated charge one."""
    ledger = Ledger()
    assert ledger.handle("/charge", "k", {"amount": 1}, None)[0] == 200
    assert ledger.handle("/charge", "k", {"amount": 1}, None)[0] == 200
    assert ledger.handle("/ship", "k", {"amount": 1}, None)[0] == 200
    assert ledger.handle("/ship", "k", {"amount": 1}, None)[0] == 200
    assert ledger.handle("/uncharge", "u", {}, None)[0] == 400
    assert ledger.effects == {("/charge", "k"): 1, ("/ship", "k"): 2}
