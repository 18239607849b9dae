"""The policy's shared state on SQLite and PostgreSQL: usage round trips, and serialized
transactions really serialize (two processes, read-modify-write, no lost update)."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select, update

from charter.store import make_engine, serialized
from services.policy import store
from services.policy.limits import Usage

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def test_usage_round_trips_and_old_calls_are_pruned(engine: Engine) -> None:
    store.create(engine)
    usage = Usage()
    usage.add(("cost", "run-1", "run"), 5)
    usage.add(("cost", "agent-a", "2026-11-22"), 7.5)
    old = (NOW - timedelta(days=2)).timestamp()
    usage.new_calls += [("agent", "agent-a", old), ("agent", "agent-a", NOW.timestamp())]
    with engine.begin() as conn:
        store.save_usage(conn, usage, NOW)
    more = Usage()
    more.add(("cost", "run-1", "run"), 0)
    more.counters[("cost", "run-1", "run")] = 9
    more.new_calls.append(("agent", "agent-a", NOW.timestamp() + 1))
    with engine.begin() as conn:
        store.save_usage(conn, more, NOW)
    with engine.connect() as conn:
        loaded = store.load_usage(
            conn,
            [("cost", "run-1", "run"), ("cost", "agent-a", "2026-11-22"), ("cost", "nope", "run")],
            [("agent", "agent-a")],
            NOW,
        )
        assert store.counter_value(conn, "cost", "agent-a", "2026-11-22") == 7.5
    assert loaded.counters == {("cost", "run-1", "run"): 9, ("cost", "agent-a", "2026-11-22"): 7.5}
    # The two-day-old call is gone; the two recent ones remain.
    assert sorted(loaded.calls[("agent", "agent-a")]) == [NOW.timestamp(), NOW.timestamp() + 1]


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
