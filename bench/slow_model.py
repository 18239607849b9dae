"""A model that takes its time, for bench/slow.py: an OpenAI-compatible chat-completions server
whose every answer comes `--delay-s` seconds after the question. It is not part of the product.

    .venv/bin/python -m bench.slow_model --port 8000 [--delay-s 1.0] [--tool lookup_order]

It plays one script, two model calls a run: asked first, it calls `--tool` with the order the
business event names (`{"order_id": ...}`, the first user message's JSON, as the planner writes
it); asked again, with the tool's result in the conversation, it answers. The wait is an
`asyncio.sleep` on one event loop, so thousands of questions may wait at once for the price of
a socket each. GET /stats: questions answered, in flight now, and the most in flight at once
since the last POST /stats/reset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass
class Stats:
    served: int = 0
    errors: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def enter(self) -> int:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.served += 1
        return self.served


def _event_data(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The business event's data: the first user message's JSON, after its one-line heading."""
    first = next(m for m in messages if m.get("role") == "user")
    data: dict[str, Any] = json.loads(str(first["content"]).split("\n", 1)[1])
    return data


def completion(messages: list[dict[str, Any]], n: int, tool: str) -> dict[str, Any]:
    """The script's next move: call the tool until the conversation holds its result, then answer."""
    message: dict[str, Any] = {"role": "assistant", "content": None}
    answered = any(m.get("role") == "tool" for m in messages)
    if answered:
        message["content"] = "Looked the order up."
    else:
        arguments = json.dumps({"order_id": _event_data(messages)["order_id"]})
        message["tool_calls"] = [
            {"id": f"call-{n}-0", "type": "function", "function": {"name": tool, "arguments": arguments}}
        ]
    prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 10
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "model": "slow-stub",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop" if answered else "tool_calls"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 20, "total_tokens": prompt + 20},
    }


def app(delay_s: float, tool: str) -> Starlette:
    stats = Stats()

    async def complete(request: Request) -> JSONResponse:
        n = stats.enter()
        try:
            body = await request.json()
            answer = completion(body["messages"], n, tool)
        except (ValueError, KeyError, TypeError, StopIteration, IndexError) as exc:
            stats.errors += 1
            stats.in_flight -= 1
            return JSONResponse({"error": {"message": f"bad request: {exc!r}"}}, status_code=400)
        try:
            await asyncio.sleep(delay_s)
        finally:
            stats.in_flight -= 1
        return JSONResponse(answer)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def read_stats(request: Request) -> JSONResponse:
        return JSONResponse(asdict(stats) | {"delay_s": delay_s})

    async def reset_stats(request: Request) -> JSONResponse:
        stats.max_in_flight = stats.in_flight
        return JSONResponse(asdict(stats) | {"delay_s": delay_s})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", complete, methods=["POST"]),
            Route("/health", health),
            Route("/v1/health", health),
            Route("/stats", read_stats),
            Route("/stats/reset", reset_stats, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=1.0, help="seconds before each answer")
    parser.add_argument("--tool", default="lookup_order", help="the tool the first answer calls")
    args = parser.parse_args()
    print(f"slow model on http://127.0.0.1:{args.port}/v1, answering in {args.delay_s}s", flush=True)
    uvicorn.run(
        app(args.delay_s, args.tool),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=8192,  # a burst of a thousand runs opens as many connections at once
        timeout_keep_alive=120,
    )


if __name__ == "__main__":
    main()
