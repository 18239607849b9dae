"""charter agents | agents show: every agent, the tools it is granted against the tools it used.

Grants come from the agent files and the tool registry, as the planner loads them; use comes
from the audit store, the record of what happened. A granted tool with no use in the window is
a grant that may be revoked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from charter import agents as agent_files
from charter import tools
from charter.cli import formats
from charter.cli.output import console, table
from charter.cli.stores import open_store
from charter.config import Settings
from charter.errors import NotFound
from services.audit import views
from services.audit.views import ToolUse

app = typer.Typer(invoke_without_command=True)
Days = Annotated[
    int, typer.Option("--days", min=1, max=36500, help="Count use over the last N days.", show_default=True)
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per agent.")]


@dataclass(frozen=True)
class ToolLine:
    tool: str
    granted: bool
    credentials: tuple[str, ...]
    use: ToolUse

    def as_json(self) -> dict[str, Any]:
        u = self.use
        return {
            "granted": self.granted,
            "credentials": list(self.credentials),
            "uses": u.uses,
            "executed": u.executed,
            "failed": u.failed,
            "dry_runs": u.dry_runs,
            "denied": u.denied,
            "last_used": u.last_used.isoformat() if u.last_used else None,
        }


@dataclass(frozen=True)
class Inventory:
    """One agent as declared (None for one the log names whose file is gone), and its tools:
    every one granted, then any other the log shows it used or was denied."""

    agent: str
    declared: agent_files.Agent | None
    tools: list[ToolLine]
    since: datetime
    unattributed: int = 0  # uses whose record no longer says which tool (bytes removed)

    @property
    def used(self) -> list[str]:
        return [t.tool for t in self.tools if t.use.uses]

    @property
    def unused(self) -> list[str]:
        return [t.tool for t in self.tools if t.granted and not t.use.uses]

    @property
    def credentials(self) -> list[str]:
        return sorted({c for t in self.tools if t.granted for c in t.credentials})

    def as_json(self) -> dict[str, Any]:
        a = self.declared
        return {
            "id": self.agent,
            "owner": a.owner if a else None,
            "purpose": a.description if a else None,
            "environment": a.environment if a else None,
            "declared": a is not None,
            "since": self.since.isoformat(),
            "granted": [t.tool for t in self.tools if t.granted],
            "used": self.used,
            "unused": self.unused,
            "credentials": self.credentials,
            "unattributed_uses": self.unattributed,
            "tools": {t.tool: t.as_json() for t in self.tools},
        }


def _inventory(
    agent: str,
    declared: agent_files.Agent | None,
    registry: Mapping[str, tools.ToolSpec],
    uses: Mapping[str | None, ToolUse],
    since: datetime,
) -> Inventory:
    granted = list(declared.tools) if declared else []
    others = sorted(t for t in uses if t is not None and t not in granted)
    lines = [
        ToolLine(
            name,
            name in granted,
            registry[name].secrets if name in registry else (),
            uses.get(name, ToolUse()),
        )
        for name in [*granted, *others]
    ]
    unattributed = uses[None].uses if None in uses else 0
    return Inventory(agent, declared, lines, since, unattributed)


def inventory(
    agents: Mapping[str, agent_files.Agent],
    registry: Mapping[str, tools.ToolSpec],
    uses: Mapping[str, Mapping[str | None, ToolUse]],
    since: datetime,
) -> list[Inventory]:
    """Every declared agent, then every agent the log shows using a tool since `since` that no
    file declares any more: what it did is still on record and should be seen."""
    ids = [*agents, *sorted(a for a in uses if a not in agents)]
    return [_inventory(a, agents.get(a), registry, uses.get(a, {}), since) for a in ids]


def _load(days: int) -> list[Inventory]:
    settings = Settings()
    registry = tools.load(settings.tool_module_list())
    agents = agent_files.load(settings.agents_dir, registry)
    since = datetime.now(UTC) - timedelta(days=days)
    engine = open_store(settings, "audit")
    try:
        with engine.connect() as conn:
            uses = views.tool_uses(conn, since)
    finally:
        engine.dispose()
    return inventory(agents, registry, uses, since)


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _status(line: ToolLine) -> str:
    if not line.granted:
        return "not granted" + (", used" if line.use.uses else "")
    return "" if line.use.uses else "unused"


def _print(inv: Inventory, days: int) -> None:
    a = inv.declared
    where = f"owner {a.owner}  environment {a.environment}" if a else "(no agent file declares it)"
    console.print(f"{inv.agent}  {where}", markup=False)
    if a:
        console.print(f"  {' '.join(a.description.split())}", markup=False)
    granted = len([t for t in inv.tools if t.granted])
    summary = f"{granted - len(inv.unused)} of {granted} granted tools used in the last {days} days"
    if a is None:
        summary = f"tools used in the last {days} days; it holds none now"
    if inv.unused:
        summary += f"; unused: {', '.join(inv.unused)}"
    console.print(f"  {summary}", markup=False)
    if inv.unattributed:
        console.print(
            f"  {inv.unattributed} uses whose tool can no longer be read (event bytes removed by retention)",
            markup=False,
        )
    rows = [
        [
            f"  {t.tool}",
            str(t.use.uses),
            _when(t.use.last_used),
            str(t.use.denied),
            ", ".join(t.credentials) or "-",
            _status(t),
        ]
        for t in inv.tools
    ]
    table(["  tool", "uses", "last used (UTC)", "denied", "credentials", ""], rows)


def _output(inventories: list[Inventory], days: int, as_json: bool) -> None:
    def text() -> None:
        for i, inv in enumerate(inventories):
            if i:
                console.print("")
            _print(inv, days)

    formats.listing([inv.as_json() for inv in inventories], text, as_json)


@app.callback()
def list_agents(ctx: typer.Context, days: Days = 30, as_json: AsJson = False) -> None:
    """Every agent: owner, purpose, environment, the tools it is granted against those it used
    in the last N days (from the audit store: calls made, denials apart), and the credentials
    (secret names) its granted tools use."""
    if ctx.invoked_subcommand is None:
        _output(_load(days), days, as_json)


@app.command("show")
def show(
    agent: Annotated[str, typer.Argument(help="The agent's id.")],
    days: Days = 30,
    as_json: AsJson = False,
) -> None:
    """One agent: its tools granted against those it used in the last N days, and credentials."""
    found = [inv for inv in _load(days) if inv.agent == agent]
    if not found:
        raise NotFound(f"no agent {agent!r} in the agent files or in the audit store")
    _output(found, days, as_json)
