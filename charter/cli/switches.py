"""charter kill-switch on | off | status

A switch is set through the API with the caller's token, so the event names the authenticated
person and carries the approvals service's signature; services apply nothing else. `--offline`
is the stack operator's way round a dead API: it signs with the approvals key from
CHARTER_KEYS_DIR (only the operator's machine holds it) and names the OS user as
`offline:<user>`, which the audit keeps.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Annotated

import typer

from charter import signing
from charter.api_client import ApiClient
from charter.cli import formats
from charter.cli.output import console, table
from charter.cli.stores import open_store
from charter.client import Client
from charter.config import Settings
from charter.events import KillSwitchAcknowledged
from charter.killswitch import SwitchStore, switch_event
from charter.stack.readiness import SERVICES
from services.policy import store as policy_store

switch_app = typer.Typer(no_args_is_help=True, help="Stop an agent, a tool, or everything, at once.")

Acks = dict[str, list[tuple[str, float]]]


def _set(
    agent: str | None, tool: str | None, active: bool, reason: str, offline: bool, timeout: float
) -> None:
    settings = Settings()
    started = time.monotonic()

    async def go() -> tuple[str, Acks]:
        async with Client(settings, source="cli") as client:
            if offline:
                event = signing.Signer.load(settings.keys, "approvals").sign(
                    switch_event(
                        agent=agent,
                        tool=tool,
                        active=active,
                        reason=reason,
                        set_by=f"offline:{getpass.getuser()}",
                        tenant=settings.tenant,
                        now=datetime.now(UTC),
                    )
                )
                await client.send(event)
                event_id, switch, since = event.event_id, event.switch_id, event.envelope.occurred_at
            else:
                with ApiClient.from_settings(settings) as api:
                    body = {"active": active, "reason": reason, "agent": agent, "tool": tool}
                    accepted = await asyncio.to_thread(api.post, "/v1/kill-switches", body)
                event_id, switch = accepted["event_id"], accepted["switch_id"]
                since = datetime.fromisoformat(accepted["occurred_at"])
            return switch, await _acknowledged(client, event_id, since, started, timeout)

    switch, acks = asyncio.run(go())
    state = "ON" if active else "off"
    console.print(f"kill switch {switch} {state}: {reason}", markup=False)
    for service in SERVICES:
        for instance, took in acks.get(service, []):
            console.print(f"  {service:<10} {instance:<20} applied after {took * 1000:.0f} ms", markup=False)
    missing = [s for s in SERVICES if s not in acks]
    if missing:
        console.print(f"  no acknowledgement within {timeout:g}s from: {', '.join(missing)}", markup=False)
        raise typer.Exit(1)


async def _acknowledged(
    client: Client, event_id: str, since: datetime, started: float, within_s: float
) -> Acks:
    """Every service's acknowledgement of the switch, as far as `within_s` allows."""
    acks: Acks = {}
    try:
        async with asyncio.timeout(within_s), aclosing(client.subscribe("control", since=since)) as events:
            async for received in events:
                ack = received.event
                if isinstance(ack, KillSwitchAcknowledged) and ack.envelope.causation_id == event_id:
                    acks.setdefault(ack.service, []).append((ack.instance, time.monotonic() - started))
                    if all(s in acks for s in SERVICES):
                        break
    except TimeoutError:
        pass
    return acks


Agent = Annotated[str | None, typer.Option("--agent", help="Only this agent (default: every agent).")]
Tool = Annotated[str | None, typer.Option("--tool", help="Only this tool (default: every tool).")]
Reason = Annotated[str, typer.Option("--reason", help="Why; every denial it causes says so.")]
Offline = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Without the API: sign with the approvals key in CHARTER_KEYS_DIR, as offline:<OS user>.",
    ),
]
Timeout = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for every service.")]


@switch_app.command("on")
def switch_on(
    reason: Reason, agent: Agent = None, tool: Tool = None, offline: Offline = False, timeout: Timeout = 5.0
) -> None:
    """Deny every new matching action now, refuse approved ones still queued, cancel the runs
    it covers; wait until every service acknowledges. Needs an operator's or admin's token."""
    _set(agent, tool, True, reason, offline, timeout)


@switch_app.command("off")
def switch_off(
    reason: Reason, agent: Agent = None, tool: Tool = None, offline: Offline = False, timeout: Timeout = 5.0
) -> None:
    """Turn a kill switch off; normal operation resumes for its scope."""
    _set(agent, tool, False, reason, offline, timeout)


@switch_app.command("status")
def switch_status() -> None:
    """The kill switches in force, as the policy service has recorded them."""
    engine = open_store(Settings(), "policy")
    switches = SwitchStore(engine, policy_store.switches).active()
    records = [
        {"switch_id": s.switch_id, "since": s.since, "set_by": s.set_by, "reason": s.reason} for s in switches
    ]

    def text() -> None:
        if not switches:
            console.print("no kill switch is on")
            return
        table(
            ["switch", "since (UTC)", "by", "reason"],
            [[s.switch_id, s.since.strftime("%Y-%m-%d %H:%M:%S"), s.set_by, s.reason] for s in switches],
        )

    formats.listing(records, text)
