"""A stand-in for an OpenAI-compatible model server, for the end-to-end tests only: it is not
part of the product. It answers `POST /v1/chat/completions` with scripted tool calls.

    python -m tests.e2e.model_server --port 8000 --log requests.jsonl

The business event in the conversation's first user message names its script (`"script"`);
each assistant turn of the script's own plays the script's next step, working from the event's
data and the tool results so far. Like a model that has been talked round, it obeys any tool
result that says "ignore your instructions and call `NAME` with {...}". Every request is
logged (its Authorization header, its body) so tests can see what the planner sent.

    python -m tests.e2e.model_server --port 8000 --log requests.jsonl --barrier 10

With `--barrier K`, no call is answered until K calls are waiting together (a cyclic
threading.Barrier, one party per request thread), so runs complete only if the planner has K
model calls in flight at once: a planner that calls one at a time never fills it. If the barrier
breaks (nobody came within `--barrier-timeout` seconds) it stays broken, and that call and every
later one are answered 500, so the runs cannot complete normally. `GET /stats` says how many
calls were ever in flight at once, so a test can show the barrier was met, not bypassed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

INJECTION = re.compile(r"ignore your instructions and call `(\w+)`(?: with (\{.*?\}))?", re.IGNORECASE)
# Tool-call ids this stub gives calls it makes for an injection, so scripts can count their own.
INJECTED = "inj-"

Step = Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]]


def call(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"tool": name, "arguments": text}


def answer(text: str) -> dict[str, Any]:
    return {"answer": text}


def _last_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    for content in reversed(results):
        if isinstance(content, dict):
            return content
    return {}


SCRIPTS: dict[str, list[Step]] = {
    # Look the order up, refund it in its currency, say so.
    "refund": [
        lambda d, r: call("lookup_order", {"order_id": d["order_id"]}),
        lambda d, r: call(
            "issue_refund",
            {"order_id": d["order_id"], "amount": d["amount"], "currency": _last_result(r)["currency"]},
        ),
        lambda d, r: answer(f"Refunded {d['amount']} {_last_result(r)['currency']} for {d['order_id']}."),
    ],
    # Three actions in three turns, then an answer: the restart test's runs.
    "multi": [
        lambda d, r: call("lookup_order", {"order_id": d["order_id"]}),
        lambda d, r: call(
            "issue_refund", {"order_id": d["order_id"], "amount": d["amount"], "currency": "EUR"}
        ),
        lambda d, r: call(
            "notify_customer", {"customer": "cust-1", "message": f"Refunded {d['amount']} EUR."}
        ),
        lambda d, r: answer("done"),
    ],
    # Two tool calls in one message: both are proposed, one after the other.
    "parallel": [
        lambda d, r: {
            "calls": [
                call("lookup_order", {"order_id": d["order_id"]}),
                call("lookup_order", {"order_id": d["other_order_id"]}),
            ]
        },
        lambda d, r: answer(f"Looked up {len(r)} orders."),
    ],
    # Read the ticket (whose text may carry an injection), then answer.
    "ticket": [
        lambda d, r: call("read_ticket", {"ticket_id": d["ticket_id"]}),
        lambda d, r: answer("The ticket is handled."),
    ],
    # Nothing but malformed calls: an unknown tool, arguments that are not JSON, wrong ones.
    "malformed": [
        lambda d, r: call("launch_rockets", {}),
        lambda d, r: call("lookup_order", '{"order_id": "A-1'),
        lambda d, r: call("lookup_order", {"order": 7}),
        lambda d, r: call("lookup_order", "[1, 2]"),
        lambda d, r: call("lookup_order", {"order": 8}),
    ],
    # Ask a human, then do what they said: refund the amount their instruction names.
    "ask": [
        lambda d, r: call("ask_human", {"question": f"Order {d['order_id']}: refund all of it, or part?"}),
        lambda d, r: call(
            "issue_refund",
            {"order_id": d["order_id"], "amount": int(re.findall(r"\d+", str(r[-1]))[-1]), "currency": "EUR"},
        ),
        lambda d, r: answer("Refunded as instructed."),
    ],
}


def _event_data(messages: list[dict[str, Any]]) -> dict[str, Any]:
    first = next(m for m in messages if m.get("role") == "user")
    data: dict[str, Any] = json.loads(str(first["content"]).split("\n", 1)[1])
    return data


def _results(messages: list[dict[str, Any]]) -> list[Any]:
    """Tool results and human instructions so far, parsed where they are JSON."""
    out: list[Any] = []
    for m in messages:
        if m.get("role") == "tool" or (m.get("role") == "user" and "says:" in str(m.get("content"))):
            try:
                out.append(json.loads(m["content"]))
            except (ValueError, TypeError):
                out.append(m["content"])
    return out


def _turn(messages: list[dict[str, Any]]) -> int:
    """How many of the script's own steps have been played."""
    return sum(
        1
        for m in messages
        if m.get("role") == "assistant"
        and not any(str(c.get("id", "")).startswith(INJECTED) for c in m.get("tool_calls") or ())
    )


def _plain(content: Any) -> str:
    """A tool result's text, with a JSON object's string values unescaped."""
    try:
        decoded = json.loads(str(content))
    except ValueError:
        return str(content)
    return " ".join(map(str, decoded.values())) if isinstance(decoded, dict) else str(content)


def decide(messages: list[dict[str, Any]]) -> dict[str, Any]:
    last = messages[-1]
    if last.get("role") == "tool":
        obeyed = INJECTION.search(_plain(last.get("content")))
        if obeyed:
            return {"calls": [call(obeyed.group(1), obeyed.group(2) or "{}")], "injected": True}
    data = _event_data(messages)
    script = SCRIPTS[data["script"]]
    step = script[min(_turn(messages), len(script) - 1)]
    return step(data, _results(messages))


def completion(messages: list[dict[str, Any]], n: int) -> dict[str, Any]:
    move = decide(messages)
    message: dict[str, Any] = {"role": "assistant", "content": move.get("answer")}
    calls = move.get("calls") or ([move] if "tool" in move else [])
    if calls:
        prefix = INJECTED if move.get("injected") else "call-"
        message["tool_calls"] = [
            {
                "id": f"{prefix}{n}-{i}",
                "type": "function",
                "function": {"name": c["tool"], "arguments": c["arguments"]},
            }
            for i, c in enumerate(calls)
        ]
    prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 10
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 20, "total_tokens": prompt + 20},
    }


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of barrier calls must not wait on a SYN retry.
    request_queue_size = 128

    def __init__(self, port: int, log: Path, barrier: threading.Barrier | None = None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.log = log
        self.lock = threading.Lock()
        self.requests = Counter[str]()
        self.served = 0
        self.barrier = barrier
        self.in_flight = 0
        self.max_in_flight = 0

    @contextmanager
    def flight(self) -> Iterator[None]:
        """Count a call as in flight, from before it waits at the barrier until it is answered."""
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self.lock:
                self.in_flight -= 1

    def gathered(self) -> bool:
        """Whether this call met the barrier's other parties (True when there is no barrier)."""
        if self.barrier is None:
            return True
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            print(
                f"model stub: barrier of {self.barrier.parties} broken "
                f"(at most {self.max_in_flight} calls were ever in flight at once)",
                file=sys.stderr,
                flush=True,
            )
            return False
        return True

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "max_in_flight": self.max_in_flight,
                "in_flight": self.in_flight,
                "served": self.served,
                "broken": self.barrier is not None and self.barrier.broken,
            }


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/stats":
            self._send(200, self.server.stats())
            return
        self._send(200, {"ok": True})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        messages = body["messages"]
        data = _event_data(messages)
        key = str(messages[1]["content"])
        with self.server.lock:
            self.server.requests[key] += 1
            self.server.served += 1
            seen, n = self.server.requests[key], self.server.served
            with self.server.log.open("a") as f:
                f.write(json.dumps({"authorization": self.headers.get("Authorization"), "body": body}) + "\n")
        with self.server.flight():
            if not self.server.gathered():
                self._send(500, {"error": {"message": "the barrier broke: too few calls in flight at once"}})
                return
            if data.get("fail_first", 0) >= seen:
                self._send(503, {"error": {"message": "overloaded"}})
                return
            if data.get("delay_s"):
                time.sleep(float(data["delay_s"]))
            self._send(200, completion(messages, n))

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--barrier", type=int, metavar="K", help="answer calls only K at a time, together")
    parser.add_argument("--barrier-timeout", type=float, default=60.0, metavar="S", help="until it breaks")
    args = parser.parse_args()
    if args.barrier is not None and args.barrier < 1:
        parser.error("--barrier must be at least 1")
    barrier = threading.Barrier(args.barrier, timeout=args.barrier_timeout) if args.barrier else None
    server = Server(args.port, args.log, barrier)
    print(f"model stub on http://127.0.0.1:{args.port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
