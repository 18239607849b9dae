"""`charter agents`: the tools each agent is granted against the tools the audit log shows it used,
on SQLite and on PostgreSQL. No broker: the events are appended to the store here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from charter import agents as agent_files
from charter import events as ev
from charter import serde, tools
from charter.cli import exits
from charter.cli.agents import Inventory, inventory
from charter.clock import new_id
from charter.config import Settings
from charter.runtime.delivery import Delivery
from charter.store import make_engine
from services.audit import retention, store, views
from services.audit.attribute import attribute
from tests.conftest import REPO
from tests.factories import ACTION, DECISION
from tests.unit.test_cli import charter

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HALF_DAY = timedelta(hours=12)
REGISTRY = tools.Registry(
    replace(s, secrets=("SHOP_API_KEY", "SHOP_SIGNING_KEY")) if s.name == "issue_refund" else s
    for s in tools.load(["charter.demo.tools"]).values()
)
AGENTS = agent_files.load(REPO / "agents", REGISTRY)


def _action(cls: type[ev.Event], agent: str, tool: str, at: datetime, **payload: Any) -> ev.Event:
    action = ACTION.model_copy(update={"tool": tool, "action_id": new_id()})
    run = new_id()
    return cls.create(
        event_id=new_id(),
        now=at,
        tenant="acme",
        agent=agent,
        run_id=run,
        correlation_id=run,
        action=action,
        **payload,
    )


def executed(agent: str, tool: str, at: datetime, dry_run: bool = False) -> ev.Event:
    return _action(
        ev.ActionExecuted,
        agent,
        tool,
        at,
        idempotency_key=new_id(),
        result={},
        duration_ms=1.0,
        attempts=1,
        dry_run=dry_run,
    )


def failed(agent: str, tool: str, at: datetime) -> ev.Event:
    return _action(
        ev.ActionFailed,
        agent,
        tool,
        at,
        idempotency_key=new_id(),
        error="timed out",
        error_type="Timeout",
        in_doubt=False,
        attempts=3,
    )


def denied(agent: str, tool: str, at: datetime) -> ev.Event:
    return _action(ev.ActionRejected, agent, tool, at, decision=DECISION, rejected_by="policy")


def proposed(agent: str, tool: str, at: datetime) -> ev.Event:
    return _action(ev.ActionProposed, agent, tool, at)


def append(engine: Engine, events: Sequence[ev.Event]) -> None:
    """Append as the audit service does: attributed from the event, its bytes as they came."""
    pending = []
    for i, event in enumerate(events):
        value = serde.encode(event)
        at_us = int(event.envelope.occurred_at.timestamp() * 1_000_000)
        delivery = Delivery("charter.actions.results", 0, i, b"k", value, (), 0)
        pending.append(store.Pending(attribute(delivery, event, at_us, None), value))
    with engine.begin() as conn:
        store.append(conn, pending)


def history(now: datetime) -> list[ev.Event]:
    return [
        executed("support-refunds", "lookup_order", now - 40 * DAY),  # outside the default window
        executed("support-refunds", "lookup_order", now - 2 * DAY),
        executed("support-refunds", "lookup_order", now - 3 * DAY),
        executed("support-refunds", "issue_refund", now - 5 * DAY),
        executed("support-refunds", "issue_refund", now - HALF_DAY, dry_run=True),
        denied("support-refunds", "issue_refund", now - HALF_DAY),
        failed("support-refunds", "notify_customer", now - 3 * DAY - HALF_DAY),  # called, failed: used
        proposed("support-refunds", "cancel_refund", now - HALF_DAY),  # proposed only: not used
        denied("it-access", "grant_access", now - HALF_DAY),  # denied only: not used
        denied("it-access", "issue_refund", now - HALF_DAY),  # not granted, and denied
        executed("retired-agent", "lookup_order", now - 6 * DAY),  # its file is gone
    ]


def _by_id(found: list[Inventory]) -> dict[str, Inventory]:
    return {inv.agent: inv for inv in found}


def _read(engine: Engine, days: int) -> dict[str, Inventory]:
    since = NOW - days * DAY
    with engine.connect() as conn:
        return _by_id(inventory(AGENTS, REGISTRY, views.tool_uses(conn, since), since))


@pytest.fixture
def recorded(engine: Engine) -> Engine:
    store.create(engine)
    append(engine, history(NOW))
    return engine


def test_granted_tools_are_set_against_the_tools_used(recorded: Engine) -> None:
    found = _read(recorded, 30)
    assert list(found)[: len(AGENTS)] == list(AGENTS)
    refunds = found["support-refunds"]
    assert [t.tool for t in refunds.tools if t.granted] == list(AGENTS["support-refunds"].tools)
    assert refunds.used == ["lookup_order", "issue_refund", "notify_customer"]
    assert refunds.unused == ["cancel_refund"]
    tools_ = {t.tool: t for t in refunds.tools}
    lookup, refund = tools_["lookup_order"].use, tools_["issue_refund"].use
    assert (lookup.uses, lookup.last_used) == (2, NOW - 2 * DAY)
    assert (refund.executed, refund.dry_runs, refund.denied, refund.last_used) == (2, 1, 1, NOW - HALF_DAY)
    assert (tools_["notify_customer"].use.uses, tools_["notify_customer"].use.failed) == (1, 1)
    assert refunds.credentials == ["SHOP_API_KEY", "SHOP_SIGNING_KEY"]
    assert tools_["lookup_order"].credentials == ()


def test_denied_actions_are_not_use(recorded: Engine) -> None:
    it = _read(recorded, 30)["it-access"]
    assert it.used == []
    assert it.unused == list(AGENTS["it-access"].tools)
    (grant,) = [t for t in it.tools if t.tool == "grant_access"]
    assert (grant.use.uses, grant.use.denied) == (0, 1)
    refund = it.as_json()["tools"]["issue_refund"]
    assert (refund["granted"], refund["uses"], refund["denied"]) == (False, 0, 1)


def test_an_agent_whose_file_is_gone_is_still_listed(recorded: Engine) -> None:
    retired = _read(recorded, 30)["retired-agent"]
    assert retired.declared is None
    assert retired.used == ["lookup_order"]
    assert retired.unused == []
    assert retired.as_json()["tools"]["lookup_order"]["granted"] is False


def test_the_window_excludes_older_use(recorded: Engine) -> None:
    assert _read(recorded, 60)["support-refunds"].tools[0].use.uses == 3
    week = _read(recorded, 4)["support-refunds"]  # not issue_refund's real run, 5 days ago
    assert week.used == ["lookup_order", "issue_refund", "notify_customer"]
    assert week.tools[0].use.uses == 2
    assert _read(recorded, 1)["support-refunds"].used == ["issue_refund"]  # the dry run, 12 hours ago


def test_use_whose_bytes_retention_removed_is_counted_not_hidden(recorded: Engine) -> None:
    retention.apply(recorded, {"default": 3 * DAY + timedelta(hours=1)}, now=NOW)
    refunds = _read(recorded, 30)["support-refunds"]
    assert refunds.unattributed == 2  # issue_refund 5 days ago, notify_customer 3.5
    assert refunds.used == ["lookup_order", "issue_refund"]
    assert refunds.unused == ["notify_customer", "cancel_refund"]  # as far as can still be read
    assert refunds.as_json()["unattributed_uses"] == 2


def _stores(home: Path) -> Engine:
    engine = make_engine(Settings(home=home).database_url_for("audit"))
    store.create(engine)
    return engine


def test_the_command_prints_each_agent_and_json_one_object_per_agent(tmp_path: Path) -> None:
    engine = _stores(tmp_path)
    append(engine, history(datetime.now(UTC)))
    engine.dispose()
    env = {"CHARTER_AGENTS_DIR": str(REPO / "agents")}
    listed = charter("agents", "--json", home=tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    objects = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [o["id"] for o in objects] == [*AGENTS, "retired-agent"]
    refunds = objects[[o["id"] for o in objects].index("support-refunds")]
    assert refunds["owner"] == "maria.lopez@example.com"
    assert refunds["purpose"] == AGENTS["support-refunds"].description
    assert refunds["unused"] == ["cancel_refund"]
    assert refunds["tools"]["issue_refund"]["uses"] == 2
    assert refunds["tools"]["issue_refund"]["denied"] == 1
    assert refunds["credentials"] == []  # the demo tools read no secrets

    shown = charter("agents", "show", "support-refunds", "--days", "60", home=tmp_path, **env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "support-refunds  owner maria.lopez@example.com  environment production"
    assert "3 of 4 granted tools used in the last 60 days; unused: cancel_refund" in shown.stdout
    assert [line.split()[0] for line in lines if line.rstrip().endswith("unused")] == ["cancel_refund"]
    (lookup,) = [line.split() for line in lines if line.startswith("  lookup_order")]
    assert lookup[1] == "3"


def test_an_unknown_agent_gets_one_line(tmp_path: Path) -> None:
    _stores(tmp_path).dispose()
    result = charter("agents", "show", "nobody", home=tmp_path, CHARTER_AGENTS_DIR=str(REPO / "agents"))
    assert result.returncode == exits.NOT_FOUND
    assert result.stderr.strip() == "charter: no agent 'nobody' in the agent files or in the audit store"
