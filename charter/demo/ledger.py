"""A simulated system of record for the demo tools: one JSON line per effect, in the data dir.

It stands in for a payments system or a directory service. Like a real one behind an
idempotency key, it performs an effect once per key and answers a repeated key with the
first result, so tests can count effects per key and prove nothing happened twice.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from charter.tools import ToolContext

FILE = "demo-ledger.jsonl"
CALLS = "demo-calls.jsonl"


def path(data_dir: Path) -> Path:
    return data_dir / FILE


def record(ctx: ToolContext, kind: str, effect: dict[str, Any]) -> dict[str, Any]:
    """Perform `effect` once for `ctx.idempotency_key`; return what was recorded for it."""
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    with path(ctx.data_dir).open("a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        for line in f:
            entry = json.loads(line)
            if entry["idempotency_key"] == ctx.idempotency_key and entry["kind"] == kind:
                return dict(entry["effect"])
        entry = {
            "kind": kind,
            "idempotency_key": ctx.idempotency_key,
            "run_id": ctx.run_id,
            "at": time.time(),
        }
        f.write(json.dumps({**entry, "effect": effect}) + "\n")
        f.flush()
    return effect


def called(ctx: ToolContext, tool: str, parameters: dict[str, Any]) -> None:
    """Note that a tool was invoked at all, effect or not: the tool side's own count."""
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    line = {"tool": tool, "idempotency_key": ctx.idempotency_key, "run_id": ctx.run_id, "agent": ctx.agent}
    with (ctx.data_dir / CALLS).open("a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({**line, "parameters": parameters, "at": time.time()}) + "\n")


def calls(data_dir: Path) -> list[dict[str, Any]]:
    p = data_dir / CALLS
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def entries(data_dir: Path) -> list[dict[str, Any]]:
    p = path(data_dir)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
