"""A local HTTP server standing in for the systems tools act on. It counts every call and every
effect per `Idempotency-Key`: /charge honours the key (a repeat returns the first answer), /ship
does not (each call is an effect), so a test can tell whether anything was done twice.

Like a real system it acts only on a whole, valid request: a caller killed between sending its
headers and its body leaves a request cut short, which is counted as a call and never as an effect.
Counting one then would leave the effect without its stored answer, so the caller's retry with the
same key would count a second effect that never happened twice."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Ledger:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.effects: Counter[tuple[str, str]] = Counter()
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}
        self.order: list[tuple[str, str]] = []
        self.delay_s = delay_s
        # Requests being answered now: a test waits for many at once before it strikes.
        self.in_flight = 0
        self._changed = threading.Condition(self.lock)

    def wait_in_flight(self, count: int, timeout_s: float) -> int:
        """Wait until `count` requests are being answered at once; how many there are then
        (fewer if the wait ran out)."""
        with self._changed:
            self._changed.wait_for(lambda: self.in_flight >= count, timeout_s)
            return self.in_flight

    def handle(
        self, path: str, key: str, body: dict[str, Any] | None, auth: str | None
    ) -> tuple[int, dict[str, Any]]:
        """`body` is None for a request cut short: a call, never an effect."""
        with self._changed:
            self.in_flight += 1
            self._changed.notify_all()
        try:
            return self._handle(path, key, body, auth)
        finally:
            with self._changed:
                self.in_flight -= 1

    def _handle(
        self, path: str, key: str, body: dict[str, Any] | None, auth: str | None
    ) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.calls[(path, key)] += 1
            if path == "/reject":
                return 422, {"error": "refused"}
            if path == "/echo":
                return 200, {"auth": auth or ""}
            if path == "/charge" and (path, key) in self.answers:
                return 200, self.answers[(path, key)]
            field = "receipt" if path == "/uncharge" else "amount"
            if body is None or field not in body:
                return 400, {"error": f"{field} is required"}  # checked before acting, never after
            answer = (
                {"undone": body["receipt"]}
                if path == "/uncharge"
                else {"receipt": f"{path[1:]}-{key}", "amount": body["amount"]}
            )
            # The effect happens before the answer: a caller killed meanwhile never hears of it.
            self.effects[(path, key)] += 1
            self.order.append((path, key))
            self.answers[(path, key)] = answer
        if self.delay_s:
            time.sleep(random.uniform(0, self.delay_s))
        return 200, answer


def _handler(ledger: Ledger) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            # Fewer bytes than announced: the caller died mid-request (the read met the end).
            body = json.loads(raw or b"{}") if len(raw) == length else None
            key = self.headers.get("Idempotency-Key") or ""
            code, answer = ledger.handle(self.path, key, body, self.headers.get("Authorization"))
            payload = json.dumps(answer).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the executor was killed mid-call: what the chaos test is for

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    # Many calls arrive at once (the executor runs runs side by side); the default backlog of 5
    # drops the rest's connections, which then wait out the kernel's SYN retries.
    request_queue_size = 128
    daemon_threads = True


@contextmanager
def serving(ledger: Ledger) -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _handler(ledger))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
