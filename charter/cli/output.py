"""How the CLI prints events: one line each, or JSON with --json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.console import Console

from charter.client import Received
from charter.describe import describe

console = Console(highlight=False, soft_wrap=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], max_width: int = 28) -> None:
    """Plain aligned columns, each cut at `max_width` but the last: readable and greppable."""

    def cut(text: str, last: bool) -> str:
        return text if last or len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cut(c, i == len(headers) - 1) for i, c in enumerate(row)] for row in [list(headers), *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers) - 1)]
    for row in cells:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        console.print(line.rstrip(), markup=False)


def received_line(received: Received, prefix: str) -> str:
    at = datetime.fromtimestamp(received.timestamp_ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
    topic = received.topic.removeprefix(prefix)
    if received.event is None:
        return f"{at} {topic:<20} {'(undecodable)':<18} {'-':<8} {received.error}"
    env = received.event.envelope
    run = (env.run_id or "-")[:8]
    return f"{at} {topic:<20} {env.event_type:<18} {run:<8} {describe(received.event)}"


def received_json(received: Received) -> str:
    body = {
        "topic": received.topic,
        "partition": received.partition,
        "offset": received.offset,
        "timestamp_ms": received.timestamp_ms,
        "trace_id": received.trace_id,
        "event": received.event.model_dump(mode="json") if received.event else None,
        "error": received.error,
    }
    return json.dumps(body, default=str)
