"""charter approvals list | show | approve | reject: through the HTTP API, with CHARTER_TOKEN.

The CLI decides exactly as the console does: the approvals service takes the person from the
token, checks their role and separation of duties, and binds the decision to the action shown.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from charter.api_client import ApiClient
from charter.cli import formats
from charter.cli.output import console, table
from charter.cli.stores import resolve_id
from charter.config import Settings
from charter.errors import ConfigError

app = typer.Typer(
    no_args_is_help=True, help="Actions waiting for a human (through the API, with CHARTER_TOKEN)."
)
ApprovalId = Annotated[str, typer.Argument(help="The approval's id, or its first characters (at least 4).")]
STATUSES = ("pending", "approved", "rejected", "amended", "expired", "withdrawn", "all")


def _age(at: str) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(at)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"


def _resolve(api: ApiClient, prefix: str) -> str:
    ids = [a["approval_id"] for a in api.approvals("all") if a["approval_id"].startswith(prefix)]
    return resolve_id(ids, prefix, "approval")


@app.command("list")
def list_(
    status: Annotated[str, typer.Option("--status", help=f"One of {', '.join(STATUSES)}.")] = "pending",
) -> None:
    """Approvals you may see: what would run, on what, who must approve, and why policy asked."""
    if status not in STATUSES:
        raise ConfigError(f"--status must be one of {', '.join(STATUSES)}")
    with ApiClient.from_settings(Settings()) as api:
        rows = api.approvals(status)

    def text() -> None:
        if not rows:
            console.print("no pending approvals" if status == "pending" else "no approvals")
            return
        table(
            ["approval", "run", "agent", "tool", "parameters", "needs", "age", "status", "why"],
            [
                [
                    a["approval_id"][:8],
                    a["run_id"][:8],
                    a["agent"],
                    a["tool"],
                    json.dumps(a["parameters"], sort_keys=True),
                    (f"{a['approvals_required']}x " if a["approvals_required"] > 1 else "")
                    + " or ".join(a["roles"]),
                    _age(a["requested_at"]),
                    a["status"],
                    a["reasons"],
                ]
                for a in rows
            ],
        )

    formats.listing(rows, text)


@app.command("show")
def show(approval_id: ApprovalId) -> None:
    """One approval in full: the action and its binding, why policy asked, the business event,
    the decisions so far, and the run's timeline."""
    with ApiClient.from_settings(Settings()) as api:
        d = api.approval(_resolve(api, approval_id))
    a = d["approval"]
    lines = [
        f"approval {a['approval_id']}  {a['status']}",
        f"  action     {a['tool']} on {a['resource']} {json.dumps(a['parameters'], sort_keys=True)}",
        f"  agent      {a['agent']} (owner {d['agent_owner'] or '-'}), run {a['run_id']}",
        f"  needs      {a['approvals_required']} approval(s) by {' or '.join(a['roles'])}",
        f"  why        {a['reasons']}",
        f"  expires    {a['expires_at']}",
        f"  binding    {a['action_hash']}",
    ]
    if d["trigger"]:
        t = d["trigger"]
        lines.append(
            f"  trigger    {t['name']} {json.dumps(t['data'], sort_keys=True)} "
            f"(submitted by {t.get('submitted_by') or '-'})"
        )
    for x in d["decisions"]:
        lines.append(
            f"  decision   {x['at']} {x['approver']} {x['attempted']}: {x['outcome']} {x['reason'] or ''}"
        )
    for e in d["timeline"]:
        lines.append(f"  #{e['seq']:<6} {e['event_type']:<18} {e['text']}")

    def text() -> None:
        for line in lines:
            console.print(line, markup=False)

    formats.one(d, text)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _edits(settings: list[str]) -> dict[str, Any]:
    edits = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes name=value, not {item!r}")
        edits[key] = _value(value)
    return edits


def _report(result: dict[str, Any], verb: str) -> None:
    a = result["approval"]
    if result["decision"] is None:
        console.print(
            f"decision sent; the approvals service has not applied it yet (approval {a['approval_id'][:8]})"
        )
        raise typer.Exit(1)
    status = a["status"]
    if status == "pending":
        counted = "your approval counted; waiting for more approvers"
        console.print(
            f"approval {a['approval_id'][:8]}: {counted} ({a['approvals_required']} needed)", markup=False
        )
        return
    follow = {
        "approved": "continues to policy, then the executor",
        "rejected": "ends",
        "amended": "goes back to policy with the edited parameters",
    }.get(status, "")
    what = f"approval {a['approval_id'][:8]} {status} by {a['decided_by']} ({verb})"
    console.print(f"{what}; run {a['run_id'][:8]} {follow}", markup=False)


@app.command("approve")
def approve(
    approval_id: ApprovalId,
    comment: Annotated[str | None, typer.Option("--comment")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="name=value: approve the action with this parameter changed (repeatable)."
        ),
    ] = None,
) -> None:
    """Approve a pending action as the token's user, bound to the action `show` displays."""
    with ApiClient.from_settings(Settings()) as api:
        full = _resolve(api, approval_id)
        a = api.approval(full)["approval"]
        parameters = {**a["parameters"], **_edits(set_)} if set_ else None
        result = api.approve(full, a["action_hash"], comment=comment, parameters=parameters)
    _report(result, "approve")


@app.command("reject")
def reject(
    approval_id: ApprovalId,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
) -> None:
    """Reject a pending action as the token's user; its run ends."""
    with ApiClient.from_settings(Settings()) as api:
        full = _resolve(api, approval_id)
        a = api.approval(full)["approval"]
        result = api.reject(full, a["action_hash"], reason=reason)
    _report(result, "reject")
