"""The policy's shared state on SQLite and PostgreSQL: usage round trips, and serialized
transactions really serialize (two processes, read-modify-write, no lost update)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select, update

from charter.store import make_engine, serialized
from services.policy import store
from services.policy.limits import Usage


def test_usage_round_trips_and_old_rate_windows_are_dropped(engine: Engine) -> None:
    store.create(engine)
    usage = Usage()
    usage.add(("cost", "run-1", "run"), 5)
    usage.add(("cost", "agent-a", "2026-11-22"), 7.5)
    for window in ("000000000007", "000000000008"):
        usage.add(("rate", "agent:agent-a", window), 3)
    with engine.begin() as conn:
        store.save_usage(conn, usage)
    more = Usage()
    more.counters[("cost", "run-1", "run")] = 8
    more.add(("cost", "run-1", "run"), 1)
    more.add(("rate", "agent:agent-a", "000000000009"), 1)
    with engine.begin() as conn:
        store.save_usage(conn, more)
    wanted = [
        ("cost", "run-1", "run"),
        ("cost", "agent-a", "2026-11-22"),
        ("cost", "nope", "run"),
        *(("rate", "agent:agent-a", f"{w:012d}") for w in (7, 8, 9)),
    ]
    with engine.connect() as conn:
        loaded = store.load_usage(conn, wanted)
        assert store.counter_value(conn, "cost", "agent-a", "2026-11-22") == 7.5
    # Window 7 is older than the previous window of 9: gone. 8 and 9 remain.
    assert loaded.counters == {
        ("cost", "run-1", "run"): 9,
        ("cost", "agent-a", "2026-11-22"): 7.5,
        ("rate", "agent:agent-a", "000000000008"): 3,
        ("rate", "agent:agent-a", "000000000009"): 1,
    }


def _steps_to_load(engine: Engine, wanted: list[tuple[str, str, str]]) -> int:
    """SQLite virtual-machine steps to load some counters: a row read is at least one."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.set_progress_handler(tick, 1)
        try:
            loaded = store.load_usage(conn, wanted)
        finally:
            raw.set_progress_handler(None, 1)
    assert set(loaded.counters) == set(wanted)
    return steps


def test_loading_a_batchs_counters_costs_the_same_however_many_runs_came_before(tmp_path: Path) -> None:
    """Every run leaves counters behind (its cost, its loop signatures): a batch's lookup must go
    through the primary key, not over them all."""
    engine = make_engine(f"sqlite:///{tmp_path / 'policy.db'}")
    store.create(engine)
    batch = [("cost", f"run-new-{i}", "run") for i in range(30)] + [("cost", "agent-a", "2026-12-07")]

    def save(runs: range) -> None:
        usage = Usage()
        for key in [*batch, *(("cost", f"run-{i}", "run") for i in runs)]:
            usage.add(key, 1)
        with engine.begin() as conn:
            store.save_usage(conn, usage)

    save(range(10))
    few = _steps_to_load(engine, batch)
    save(range(10, 20_000))
    many = _steps_to_load(engine, batch)
    engine.dispose()
    assert few > 0
    assert many <= few * 1.5, (few, many)  # a B-tree a level deeper at most; a scan is ~20,000 more


_meta = MetaData()
_counter = Table("t_counter", _meta, Column("name", String(10), primary_key=True), Column("n", Integer))


def _increment(url: str, times: int) -> None:
    engine = make_engine(url)
    for _ in range(times):
        with serialized(engine, "counter") as conn:
            n = conn.execute(select(_counter.c.n).where(_counter.c.name == "x")).scalar_one()
            conn.execute(update(_counter).where(_counter.c.name == "x").values(n=n + 1))
    engine.dispose()


def test_serialized_transactions_lose_no_update_across_processes(engine: Engine) -> None:
    _meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(_counter.insert().values(name="x", n=0))
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_increment, args=(url, 60)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    with engine.connect() as conn:
        assert conn.execute(select(_counter.c.n)).scalar_one() == 120
