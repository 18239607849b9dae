"""A simulated system of record for the demo tools: a SQLite file in the data dir.

It stands in for a payments system or a directory service. Like a real one behind an
idempotency key, it performs an effect once per key and answers a repeated key with the
first result, so tests can count effects per key and prove nothing happened twice.

An effect is found by its (kind, idempotency key) primary key, so the millionth call costs what
the first did: the demo is what newcomers and the benchmarks run, and a ledger read whole
before every effect made a long-running stack slower by the minute. Executor replicas and
tool threads share the file: SQLite's write-ahead log and busy timeout serialise the writers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from charter.tools import ToolContext

FILE = "demo-ledger.db"
SCHEMA = """
create table if not exists effects (
    kind text not null,
    idempotency_key text not null,
    run_id text,
    at real not null,
    effect text not null,
    primary key (kind, idempotency_key)
);
create table if not exists calls (
    tool text not null,
    idempotency_key text not null,
    run_id text,
    agent text,
    parameters text not null,
    at real not null
);
"""


def path(data_dir: Path) -> Path:
    return data_dir / FILE


_local = threading.local()


def connect(data_dir: Path) -> sqlite3.Connection:
    """A new connection to the data dir's ledger, made on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path(data_dir), timeout=30, isolation_level=None)
    conn.execute("pragma journal_mode=wal")
    conn.execute("pragma synchronous=normal")
    conn.executescript(SCHEMA)
    return conn


def connection(data_dir: Path) -> sqlite3.Connection:
    """This thread's connection to the ledger, kept: the tools' calls are the hot path."""
    kept: dict[Path, sqlite3.Connection] = _local.__dict__.setdefault("connections", {})
    if data_dir not in kept:
        kept[data_dir] = connect(data_dir)
    return kept[data_dir]


@contextmanager
def _opened(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A connection for a reader that looks once (a test, a report), closed after."""
    with closing(connect(data_dir)) as conn:
        yield conn


def record(ctx: ToolContext, kind: str, effect: dict[str, Any]) -> dict[str, Any]:
    """Perform `effect` once for `ctx.idempotency_key`; return what was recorded for it."""
    conn = connection(ctx.data_dir)
    with conn:
        conn.execute(
            "insert or ignore into effects (kind, idempotency_key, run_id, at, effect) "
            "values (?, ?, ?, ?, ?)",
            (kind, ctx.idempotency_key, ctx.run_id, time.time(), json.dumps(effect)),
        )
        row = conn.execute(
            "select effect from effects where kind = ? and idempotency_key = ?", (kind, ctx.idempotency_key)
        ).fetchone()
    return dict(json.loads(row[0]))


def called(ctx: ToolContext, tool: str, parameters: dict[str, Any]) -> None:
    """Note that a tool was invoked at all, effect or not: the tool side's own count."""
    conn = connection(ctx.data_dir)
    with conn:
        conn.execute(
            "insert into calls (tool, idempotency_key, run_id, agent, parameters, at) "
            "values (?, ?, ?, ?, ?, ?)",
            (tool, ctx.idempotency_key, ctx.run_id, ctx.agent, json.dumps(parameters), time.time()),
        )


def calls(data_dir: Path) -> list[dict[str, Any]]:
    """Every invocation noted, oldest first."""
    if not path(data_dir).exists():
        return []
    with _opened(data_dir) as conn:
        rows = conn.execute(
            "select tool, idempotency_key, run_id, agent, parameters, at from calls order by rowid"
        ).fetchall()
    return [
        {"tool": t, "idempotency_key": k, "run_id": r, "agent": a, "parameters": json.loads(p), "at": at}
        for t, k, r, a, p, at in rows
    ]


def entries(data_dir: Path) -> list[dict[str, Any]]:
    """Every effect performed, oldest first."""
    if not path(data_dir).exists():
        return []
    with _opened(data_dir) as conn:
        rows = conn.execute(
            "select kind, idempotency_key, run_id, at, effect from effects order by rowid"
        ).fetchall()
    return [
        {"kind": k, "idempotency_key": key, "run_id": r, "at": at, "effect": json.loads(e)}
        for k, key, r, at, e in rows
    ]
