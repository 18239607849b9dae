"""The demo's system of record costs the same on the ten-thousandth effect as on the first, and
still performs each effect once per key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from charter.demo import ledger
from charter.tools import ToolContext


def _ctx(data_dir: Path, key: str) -> ToolContext:
    run = key.split(":", maxsplit=1)[0]
    return ToolContext(
        idempotency_key=key, run_id=run, agent="support-refunds", environment="dev", data_dir=data_dir
    )


def _steps(conn: sqlite3.Connection, data_dir: Path, key: str) -> int:
    """SQLite virtual-machine steps one effect takes: every row read is at least one step, so a
    ledger read whole before an effect would show here as thousands."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(tick, 1)
    try:
        ledger.called(_ctx(data_dir, key), "issue_refund", {"order_id": key})
        ledger.record(_ctx(data_dir, key), "refund", {"refund_id": f"rf-{key}"})
    finally:
        conn.set_progress_handler(None, 1)
    return steps


def test_an_effects_cost_does_not_grow_with_the_ledger(tmp_path: Path) -> None:
    conn = ledger.connection(tmp_path)  # the one record() and called() use on this thread
    for i in range(10):
        ledger.record(_ctx(tmp_path, f"run-{i}:0"), "refund", {"refund_id": f"rf-{i}"})
    small = _steps(conn, tmp_path, "run-small:0")
    with conn:
        conn.executemany(
            "insert into effects (kind, idempotency_key, run_id, at, effect) "
            "values ('refund', ?, ?, 0, '{}')",
            [(f"bulk-{i}:0", f"bulk-{i}") for i in range(10_000)],
        )
        conn.executemany(
            "insert into calls (tool, idempotency_key, run_id, agent, parameters, at) "
            "values ('issue_refund', ?, ?, 'a', '{}', 0)",
            [(f"bulk-{i}:0", f"bulk-{i}") for i in range(10_000)],
        )
    large = _steps(conn, tmp_path, "run-large:0")
    assert len(ledger.entries(tmp_path)) == 10_012
    # The same statements, a B-tree one level deeper at most: never a step per row.
    assert small > 0
    assert large <= small + 10, (small, large)


def test_an_effect_is_performed_once_per_key_and_answered_with_the_first(tmp_path: Path) -> None:
    first = ledger.record(_ctx(tmp_path, "run-1:0"), "refund", {"refund_id": "rf-1", "amount": 10})
    again = ledger.record(_ctx(tmp_path, "run-1:0"), "refund", {"refund_id": "rf-2", "amount": 99})
    other_kind = ledger.record(_ctx(tmp_path, "run-1:0"), "notification", {"to": "c-1"})
    assert first == again == {"refund_id": "rf-1", "amount": 10}
    assert other_kind == {"to": "c-1"}
    assert [(e["kind"], e["run_id"], e["effect"]) for e in ledger.entries(tmp_path)] == [
        ("refund", "run-1", first),
        ("notification", "run-1", other_kind),
    ]
    ledger.called(_ctx(tmp_path, "run-1:0"), "issue_refund", {"order_id": "A-1"})
    [call] = ledger.calls(tmp_path)
    assert (call["tool"], call["run_id"]) == ("issue_refund", "run-1")
    assert call["parameters"] == {"order_id": "A-1"}


def test_an_empty_data_dir_has_no_entries_and_makes_no_file(tmp_path: Path) -> None:
    assert ledger.entries(tmp_path / "none") == []
    assert ledger.calls(tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
