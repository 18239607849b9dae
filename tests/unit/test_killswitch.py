from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, MetaData

from charter.clock import new_id
from charter.events import KillSwitchSet
from charter.killswitch import KillSwitch, SwitchStore, matching, switch_id, switches_table

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def _event(active: bool, at: datetime, agent: str | None = "a", tool: str | None = None) -> KillSwitchSet:
    return KillSwitchSet.create(
        event_id=new_id(),
        now=at,
        tenant="t",
        correlation_id="c",
        switch_id=switch_id(agent, tool),
        scope_agent=agent,
        scope_tool=tool,
        active=active,
        reason="on" if active else "off",
        set_by="ops",
    )


def test_one_id_per_scope() -> None:
    assert switch_id("a", None) == "agent=a,tool=*"
    assert switch_id(None, None) == "agent=*,tool=*"
    assert switch_id("a", "t") != switch_id("a", None)


def test_matching_honours_both_scopes() -> None:
    switches = [KillSwitch(switch_id("a", "t"), "a", "t", "r", "ops", NOW)]
    assert matching(switches, "a", "t") is not None
    assert matching(switches, "a", "u") is None
    assert matching(switches, "b", "t") is None
    assert "agent a and tool t" in switches[0].describe()


def test_the_latest_change_wins_even_when_delivered_out_of_order(engine: Engine) -> None:
    metadata = MetaData()
    table = switches_table(metadata, "test")
    metadata.create_all(engine)
    switches = SwitchStore(engine, table)
    on, off = _event(True, NOW), _event(False, NOW + timedelta(seconds=1))
    with engine.begin() as conn:
        assert switches.apply(conn, on)
        assert switches.apply(conn, off)
        assert not switches.apply(conn, on)  # a redelivered older event changes nothing
    assert switches.active() == []
    with engine.begin() as conn:
        switches.apply(conn, _event(True, NOW + timedelta(seconds=2), agent=None, tool="t"))
    [active] = switches.active()
    assert (active.agent, active.tool) == (None, "t")
