"""A personal field nested in a step's result is purged with the run's subject: the trigger names
the customer; the result, the run's outputs (keyed by step id) and the events between do not."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from charter.events import RunCompleted
from tests.conftest import REPO
from tests.e2e.conftest import Stack, run_id, running, stack_env, wait_run_end
from tests.e2e.lookup_tools import EMAIL

pytestmark = pytest.mark.e2e

SUBJECT = "cust-purge-1"
AGENT = """
id: lookup
owner: tests@example.com
description: Looks up an order's contacts.
environment: production
roles: [tester]
triggers: [{event: test.lookup}]
tools: [test_lookup]
steps:
  - {id: contacts, tool: test_lookup, resource: "test/lookup", parameters: {order: "{{ trigger.order }}"}}
"""
POLICY = """
@id("testers-look-up")
@reason("the purge test may look up contacts")
permit (principal in Role::"tester", action == Action::"test_lookup", resource);
"""
RESOURCES = """
  - match: "test/*"
    environment: production
    kind: test
"""


def _configure(home: Path) -> dict[str, str]:
    env = {"CHARTER_TOOL_MODULES": "charter.demo.tools,tests.e2e.lookup_tools", "PYTHONPATH": str(REPO)}
    config = Path(stack_env(home, **env)["CHARTER_AGENTS_DIR"]).parent
    (config / "agents" / "lookup.yaml").write_text(AGENT)
    (config / "policies" / "lookup.cedar").write_text(POLICY)
    with (config / "policies" / "resources.yaml").open("a") as resources:
        resources.write(RESOURCES)
    return env


def _audited_run(stack: Stack, run: str, timeout: float = 30) -> list[tuple[str, str | None]]:
    """The run's rows once its start, actions and end are in the audit log: (event type, subject)
    each."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(stack.settings.data_dir / "audit.db") as conn:
            rows = conn.execute(
                "select event_type, subject from audit_log where run_id = ? order by seq", (run,)
            ).fetchall()
        if {"RunStarted", "ActionExecuted", "RunCompleted"} <= {t for t, _ in rows}:  # three topics
            return rows
        time.sleep(0.2)
    raise AssertionError(f"run {run} never completed in the audit log")


def _clear_copies(db: Path) -> list[str]:
    """Every table and column of the audit store still holding the email as written, and the
    database's files themselves."""
    found = []
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            for row in conn.execute(f'select * from "{table}"'):
                if any(EMAIL.encode() in (v if isinstance(v, bytes) else str(v).encode()) for v in row):
                    found.append(table)
    return found + [f.name for f in db.parent.glob(f"{db.name}*") if EMAIL.encode() in f.read_bytes()]


@pytest.mark.tansu
def test_a_nested_personal_field_is_purged_with_the_runs_subject(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running(home, **_configure(home)) as stack:
        trigger = stack.publish("test.lookup", {"customer_id": SUBJECT, "order": "A-7"})
        run = run_id(trigger, "lookup")
        ended = wait_run_end(stack, run)
        assert isinstance(ended, RunCompleted)
        assert ended.outputs["contacts"]["contacts"][0]["email"] == EMAIL  # the step's result, nested
        rows = _audited_run(stack, run)
        # Every event of the run that held or might hold it is sealed under the trigger's subject, or
        # under the run's own key (tied to the subject) if the audit read it before the run's start.
        sealed = {t: s for t, s in rows if s in (SUBJECT, f"run:{run}")}
        assert sealed.keys() >= {"RunStarted", "ActionExecuted", "RunCompleted"}
        assert sealed["RunStarted"] == SUBJECT
        db = stack.settings.data_dir / "audit.db"
        assert _clear_copies(db) == []
        purged = stack.cli("audit", "purge", "--subject", SUBJECT, "--by", "dpo@example.com")
        assert f"purged: the personal data of {SUBJECT}" in purged.stdout
        assert _clear_copies(db) == []
        assert "audit log verified" in stack.cli("audit", "verify").stdout
