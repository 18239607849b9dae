"""charter runs | run show | run resume | run cancel"""

from __future__ import annotations

from typing import Annotated

import typer

from charter.api_client import ApiClient
from charter.cli.output import console, table
from charter.cli.stores import open_store, resolve_id
from charter.config import Settings
from services.audit import store as audit
from services.audit import views

run_app = typer.Typer(no_args_is_help=True, help="One run.")


def list_runs(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many of the latest runs.")] = 20,
) -> None:
    """The latest runs, from the audit store: agent, trigger, status, and the last thing that happened."""
    engine = open_store(Settings(), "audit")
    with engine.connect() as conn:
        summaries = views.recent(conn, limit=limit)
    rows = [
        [
            s.run_id[:8],
            s.agent,
            s.trigger,
            s.started.strftime("%Y-%m-%d %H:%M:%S") if s.started else "-",
            s.status,
            s.last,
        ]
        for s in summaries
    ]
    if not rows:
        console.print("no runs yet")
        return
    table(["run", "agent", "trigger", "started (UTC)", "status", "last event"], rows)


@run_app.command("show")
def show(run_id: Annotated[str, typer.Argument(help="The run's id, or its first characters.")]) -> None:
    """The run's timeline from the audit store: every event, in order, with its time."""
    engine = open_store(Settings(), "audit")
    with engine.connect() as conn:
        full = resolve_id(audit.run_ids(conn, prefix=run_id, limit=2), run_id, "run")
        entries = views.timeline(conn, full)
    first = next((e.occurred_at for e in entries if e.occurred_at), None)
    s = views.summarize(full, entries)
    console.print(f"run {full}  agent {s.agent}  trigger {s.trigger}  status {s.status}", markup=False)
    for e in entries:
        since = (e.occurred_at - first).total_seconds() * 1000 if e.occurred_at and first else None
        offset = f"+{since:8.1f} ms" if since is not None else " " * 12
        console.print(f"  #{e.seq:<6} {offset}  {e.event_type:<18} {e.text}", markup=False)


def _full_id(prefix: str) -> str:
    engine = open_store(Settings(), "audit")
    with engine.connect() as conn:
        return resolve_id(audit.run_ids(conn, prefix=prefix, limit=2), prefix, "run")


@run_app.command("resume")
def resume(
    run_id: Annotated[str, typer.Argument(help="The escalated run's id, or its first characters.")],
    instruction: Annotated[
        str,
        typer.Option("--instruction", "-i", help="What the run's model reads next (or why, for a playbook)."),
    ] = "",
) -> None:
    """Resume an escalated run through the API (role operator or admin). A model-planned run
    reads the instruction next; a playbook run proposes the step it stopped at again."""
    full = _full_id(run_id)
    with ApiClient.from_settings(Settings()) as api:
        out = api.post(f"/v1/runs/{full}/resume", {"instruction": instruction})
    console.print(f"run {full} resumed by {out['instructed_by']} (event {out['event_id']})", markup=False)


@run_app.command("cancel")
def cancel(
    run_id: Annotated[str, typer.Argument(help="The run's id, or its first characters.")],
    reason: Annotated[str, typer.Option("--reason", help="Recorded with the cancellation.")] = "",
) -> None:
    """Cancel a running or escalated run through the API (role operator or admin); what it did
    that can be undone is undone first."""
    full = _full_id(run_id)
    with ApiClient.from_settings(Settings()) as api:
        out = api.post(f"/v1/runs/{full}/cancel", {"instruction": reason})
    console.print(f"run {full} cancelled by {out['instructed_by']} (event {out['event_id']})", markup=False)
