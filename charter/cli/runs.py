"""charter runs [list] | runs show | runs resume | runs cancel (and `run show|resume|cancel`, the
older form, kept working)

Through the API with the caller's token, so each person reads only the runs their roles may
(an approver, those of the approvals they may decide). `--offline` reads the audit store
directly: the stack operator's way in with the API down.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from charter.api_client import ApiClient
from charter.cli import formats
from charter.cli.output import console, table
from charter.cli.stores import open_store, resolve_id
from charter.config import Settings
from services.audit import store as audit
from services.audit import views

runs_app = typer.Typer(help="Runs: the latest (`charter runs`, or `runs list`), one in full, resume, cancel.")
run_app = typer.Typer(no_args_is_help=True, help="One run (the older form of `charter runs`).")


Offline = Annotated[
    bool, typer.Option("--offline", help="Without the API: the audit store itself (the operator).")
]
Limit = Annotated[int, typer.Option("--limit", min=1, max=500, help="How many of the latest runs.")]


def _parsed(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@runs_app.callback(invoke_without_command=True)
def runs(ctx: typer.Context, limit: Limit = 20, offline: Offline = False) -> None:
    """Runs: `charter runs` lists the latest, as `charter runs list` does."""
    if ctx.invoked_subcommand is None:
        list_runs(limit, offline)


@runs_app.command("list")
def list_runs(limit: Limit = 20, offline: Offline = False) -> None:
    """The latest runs you may read: agent, trigger, status, and the last thing that happened."""
    settings = Settings()
    if offline:
        with open_store(settings, "audit").connect() as conn:
            summaries = [
                (s.run_id, s.agent, s.trigger, s.started, s.status, s.last)
                for s in views.recent(conn, limit=limit)
            ]
    else:
        with ApiClient.from_settings(settings) as api:
            runs = api.get("/v1/runs", limit=limit)["runs"]
        summaries = [
            (r["run_id"], r["agent"], r["trigger"], _parsed(r["started"]), r["status"], r["last"])
            for r in runs
        ]
    fields = ("run_id", "agent", "trigger", "started", "status", "last")
    records: list[dict[str, Any]] = [dict(zip(fields, summary, strict=True)) for summary in summaries]

    def text() -> None:
        if not records:
            console.print("no runs yet")
            return
        rows = [
            [
                r["run_id"][:8],
                r["agent"],
                r["trigger"],
                r["started"].strftime("%Y-%m-%d %H:%M:%S") if r["started"] else "-",
                r["status"],
                r["last"],
            ]
            for r in records
        ]
        table(["run", "agent", "trigger", "started (UTC)", "status", "last event"], rows)

    formats.listing(records, text)


FULL_ID = 36  # a run id is a UUID


def full_run_id(settings: Settings, prefix: str) -> str:
    """The run whose id starts with `prefix`, as the API finds it for this user (404 when none,
    or when more than one does)."""
    with ApiClient.from_settings(settings) as api:
        return str(api.get(f"/v1/runs/{prefix}")["run"]["run_id"])


@runs_app.command("show")
@run_app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="The run's id, or its first characters.")],
    offline: Offline = False,
) -> None:
    """The run's timeline from the audit log: every event, in order, with its time."""
    settings = Settings()
    if offline:
        with open_store(settings, "audit").connect() as conn:
            full = resolve_id(audit.run_ids(conn, prefix=run_id, limit=2), run_id, "run")
            entries = views.timeline(conn, full)
        s = views.summarize(full, entries)
        head = (full, s.agent, s.trigger, s.status)
        lines = [(e.seq, e.occurred_at, e.event_type, e.text) for e in entries]
    else:
        with ApiClient.from_settings(settings) as api:
            detail = api.get(f"/v1/runs/{run_id}")
        run = detail["run"]
        head = (run["run_id"], run["agent"], run["trigger"], run["status"])
        lines = [
            (t["seq"], _parsed(t["occurred_at"]), t["event_type"], t["text"]) for t in detail["timeline"]
        ]
    record = {
        "run": dict(zip(("run_id", "agent", "trigger", "status"), head, strict=True)),
        "timeline": [
            {"seq": seq, "occurred_at": at, "event_type": event_type, "text": said}
            for seq, at, event_type, said in lines
        ],
    }

    def text() -> None:
        first = next((at for _, at, _, _ in lines if at), None)
        console.print(f"run {head[0]}  agent {head[1]}  trigger {head[2]}  status {head[3]}", markup=False)
        for seq, at, event_type, said in lines:
            since = (at - first).total_seconds() * 1000 if at and first else None
            offset = f"+{since:8.1f} ms" if since is not None else " " * 12
            console.print(f"  #{seq:<6} {offset}  {event_type:<18} {said}", markup=False)

    formats.one(record, text)


@runs_app.command("resume")
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
    with ApiClient.from_settings(Settings()) as api:
        out = api.post(f"/v1/runs/{run_id}/resume", {"instruction": instruction})
    console.print(
        f"run {out['run_id']} resumed by {out['instructed_by']} (event {out['event_id']})", markup=False
    )


@runs_app.command("cancel")
@run_app.command("cancel")
def cancel(
    run_id: Annotated[str, typer.Argument(help="The run's id, or its first characters.")],
    reason: Annotated[str, typer.Option("--reason", help="Recorded with the cancellation.")] = "",
) -> None:
    """Cancel a running or escalated run through the API (role operator or admin); what it did
    that can be undone is undone first."""
    with ApiClient.from_settings(Settings()) as api:
        out = api.post(f"/v1/runs/{run_id}/cancel", {"instruction": reason})
    console.print(
        f"run {out['run_id']} cancelled by {out['instructed_by']} (event {out['event_id']})", markup=False
    )
