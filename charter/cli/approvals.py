"""charter approvals list | approve | reject"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from sqlalchemy import Engine

from charter.cli.output import console, table
from charter.cli.stores import open_store, resolve_id
from charter.client import Client
from charter.clock import as_utc
from charter.config import Settings
from charter.errors import ConfigError
from services.approvals import store

app = typer.Typer(no_args_is_help=True, help="Actions waiting for a human.")
DECISION_WAIT_S = 15.0
ApprovalId = Annotated[str, typer.Argument(help="The approval's id, or its first characters (at least 4).")]
User = Annotated[str, typer.Option("--as", help="Who decides.")]


def _age(at: datetime) -> str:
    seconds = (datetime.now(UTC) - as_utc(at)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"


@app.command("list")
def list_(show_all: Annotated[bool, typer.Option("--all", help="Decided approvals too.")] = False) -> None:
    """Pending approvals: what would run, on what, and why policy asked for a human."""
    engine = open_store(Settings(), "approvals")
    with engine.connect() as conn:
        rows = store.listing(conn, None if show_all else "pending")
    if not rows:
        console.print("no approvals" if show_all else "no pending approvals")
        return
    table(
        ["approval", "run", "agent", "tool", "parameters", "role", "age", "status", "why"],
        [
            [
                a.approval_id[:8],
                a.run_id[:8],
                a.agent,
                a.tool,
                a.parameters,
                a.roles,
                _age(a.requested_at),
                a.status,
                a.reasons,
            ]
            for a in rows
        ],
        max_width=40,
    )


def _decide(approval_id: str, user: str, *, approve: bool, note: str | None) -> None:
    settings = Settings()
    engine = open_store(settings, "approvals")
    with engine.connect() as conn:
        match = resolve_id([a.approval_id for a in store.find(conn, approval_id)], approval_id, "approval")
        approval = store.find(conn, match)[0]
    if approval.status != "pending":
        if approval.status == "withdrawn":
            raise ConfigError(f"approval {match[:8]} was withdrawn: {approval.note}")
        raise ConfigError(f"approval {match[:8]} is already {approval.status} by {approval.decided_by}")

    async def send() -> None:
        async with Client(settings, source="cli") as client:
            if approve:
                await client.approve(match, approver=user, run_id=approval.run_id, comment=note)
            else:
                await client.reject(match, approver=user, run_id=approval.run_id, reason=note)

    asyncio.run(send())
    status = _await_decision(engine, match)
    if status == "pending":
        console.print(
            f"decision sent; the approvals service has not applied it within {DECISION_WAIT_S:.0f}s"
        )
        raise typer.Exit(1)
    verb = "continues to the executor" if status == "approved" else "ends"
    console.print(f"approval {match[:8]} {status} by {user}; run {approval.run_id[:8]} {verb}", markup=False)


def _await_decision(engine: Engine, approval_id: str) -> str:
    deadline = time.monotonic() + DECISION_WAIT_S
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            status = store.find(conn, approval_id)[0].status
        if status != "pending":
            return status
        time.sleep(0.1)
    return "pending"


@app.command("approve")
def approve(
    approval_id: ApprovalId,
    user: User,
    comment: Annotated[str | None, typer.Option("--comment")] = None,
) -> None:
    """Approve a pending action; it continues to the executor."""
    _decide(approval_id, user, approve=True, note=comment)


@app.command("reject")
def reject(
    approval_id: ApprovalId,
    user: User,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
) -> None:
    """Reject a pending action; its run ends."""
    _decide(approval_id, user, approve=False, note=reason)
