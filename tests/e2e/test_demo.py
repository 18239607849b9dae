"""`make run` from a fresh home: `charter up --demo --once` shows every demo run's outcome, with
SQLite stores (the default) and with PostgreSQL, on Tansu and on the Kafka `--broker kafka`
starts for itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import stack_env

pytestmark = pytest.mark.e2e


def _demo(home: Path, *args: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "charter", "up", "--demo", "--once", *args],
        capture_output=True,
        text=True,
        env=stack_env(home, **env),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _check(out: str) -> None:
    assert "ready in" in out
    outcomes = [
        line.split()[2]
        for line in out.splitlines()
        if line.startswith("  ")
        and len(line.split()) > 3
        and line.split()[2] in ("completed", "failed", "running")
    ]
    assert sorted(outcomes) == ["completed", "completed", "completed", "failed", "failed"], out
    assert "dana approves it through the API" in out
    assert "console: http://127.0.0.1:" in out
    assert "forbidden by refund-over-limit" in out
    assert "forbidden by no-production-admin" in out
    assert "stopped in" in out


@pytest.mark.tansu
def test_the_demo_on_sqlite(tmp_path: Path) -> None:
    _check(_demo(tmp_path / "home"))


@pytest.mark.tansu
@pytest.mark.postgres
def test_the_demo_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    _check(_demo(tmp_path / "home", CHARTER_DATABASE_URL=postgres_url))


@pytest.mark.kafka
def test_the_demo_on_the_kafka_that_up_starts(tmp_path: Path) -> None:
    out = _demo(tmp_path / "home", "--broker", "kafka")
    assert "Apache Kafka (KRaft, local) on 127.0.0.1:" in out
    assert "transactions on" in out
    _check(out)
