"""Fixtures shared by every test: fixed time, and SQL stores on SQLite and on PostgreSQL.

PostgreSQL is required, not optional: `make test` starts it (scripts/postgres.sh). A test
that needs it fails when it is missing; it is never skipped.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from charter.clock import FixedClock
from charter.store import make_engine

ADMIN_URL = os.environ.get("CHARTER_TEST_PG_ADMIN", "postgresql://charter:charter@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC))


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required for the store tests ({ADMIN_URL}): {exc}; run scripts/postgres.sh"
        )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"charter_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        _drop(name)


def _drop(name: str) -> None:
    # FORCE ends the test's own connections; an autovacuum worker that has just started on the
    # database (a test wrote enough to trigger one) belongs to the superuser and cannot be ended
    # by this role, but it gives way within moments.
    for attempt in range(50):
        try:
            with _admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            if attempt == 49:
                raise
            time.sleep(0.1)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same store contract, run once on each database Charter supports."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    made = make_engine(url)
    try:
        yield made
    finally:
        made.dispose()


# The log says which broker each end-to-end test ran on, and how long each broker's share took.
_BROKER_SECONDS: dict[str, float] = {"tansu": 0.0, "kafka": 0.0}
_BROKER_OUTCOMES: dict[str, dict[str, int]] = {"tansu": {}, "kafka": {}}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for kind in _BROKER_SECONDS:
        if kind in report.keywords:
            _BROKER_SECONDS[kind] += report.duration
            if report.when == "call" or report.outcome != "passed":
                outcomes = _BROKER_OUTCOMES[kind]
                outcomes[report.outcome] = outcomes.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not any(_BROKER_OUTCOMES.values()):
        return
    from tests.e2e.conftest import TIMINGS

    terminalreporter.section("brokers")
    for kind, outcomes in _BROKER_OUTCOMES.items():
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) or "none"
        terminalreporter.write_line(
            f"{kind}: {counts}; {_BROKER_SECONDS[kind]:.1f}s in setup, calls and teardown"
        )
    if "kafka_start_s" in TIMINGS:
        terminalreporter.write_line(
            f"Apache Kafka (KRaft, one node) started in {TIMINGS['kafka_start_s']:.1f}s"
        )
