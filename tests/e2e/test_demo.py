"""`make run` from a fresh home: `charter up --demo --once` shows every demo run's outcome,
with SQLite stores (the default) and with PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import stack_env

pytestmark = pytest.mark.e2e


def _demo(home: Path, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "charter", "up", "--demo", "--once"],
        capture_output=True,
        text=True,
        env=stack_env(home, **env),
        timeout=180,
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
    assert "approving as dana" in out
    assert "forbidden by refund-over-limit" in out
    assert "forbidden by no-production-admin" in out
    assert "stopped in" in out


def test_the_demo_on_sqlite(tmp_path: Path) -> None:
    _check(_demo(tmp_path / "home"))


@pytest.mark.postgres
def test_the_demo_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    _check(_demo(tmp_path / "home", CHARTER_DATABASE_URL=postgres_url))
