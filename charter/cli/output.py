"""How the CLI prints: tables, and events one line each (or JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from charter.client import Received
from charter.describe import describe

console = Console(highlight=False, soft_wrap=True)
# Piped output has no width to fit: rows of a table are as long as their cells.
_unbounded = Console(highlight=False, width=1_000_000)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns drawn by rich, nothing cut: in a terminal a long cell wraps inside its column; piped,
    each row stays on one line, so grep finds it whole (`--output jsonl` is for programs)."""
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        grid.add_column(header, overflow="fold")
    for row in rows:
        # Text, not str: a cell such as `[approval d8fab4b1]` is data, never rich markup.
        grid.add_row(*(Text(cell) for cell in row))
    if console.is_terminal:
        console.print(grid)
        return
    with _unbounded.capture() as drawn:
        _unbounded.print(grid)
    # rich pads the last column to its width; a line of a pipe ends where its text does.
    print("\n".join(line.rstrip() for line in drawn.get().splitlines()))


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
