"""The policy's shared state on SQLite and PostgreSQL: usage round trips, and serialized
transactions really serialize (two processes, read-modify-write, no lost update)."""

from __future__ import annotations

import multiprocessing

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
