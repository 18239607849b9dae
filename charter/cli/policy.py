"""charter policy check | test | what-if"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from charter import agents as agent_files
from charter import tools
from charter.cli.output import console, table
from charter.cli.stores import open_store
from charter.config import Settings
from charter.errors import ConfigError
from services.audit import store as audit
from services.policy.bundle import PolicyBundle
from services.policy.check import check as check_policies
from services.policy.check import load_cases, run_case
from services.policy.decide import Context
from services.policy.whatif import what_if

app = typer.Typer(no_args_is_help=True, help="Check, test and compare policies before rollout.")
Directory = Annotated[Path | None, typer.Argument(help="A policy directory (default: CHARTER_POLICIES_DIR).")]


def _registry(settings: Settings) -> tuple[dict[str, agent_files.Agent], tools.Registry]:
    registry = tools.load(settings.tool_module_list())
    return agent_files.load(settings.agents_dir, registry), registry


@app.command("check")
def check(directory: Directory = None) -> None:
    """Validate the policies against a Cedar schema generated from the agents and tools;
    name file and line of every unknown tool, unknown attribute or type error. Exit 1 if any."""
    settings = Settings()
    agents, registry = _registry(settings)
    where = directory or settings.policies_dir
    bundle, problems = check_policies(where, agents, registry)
    for problem in problems:
        console.print(str(problem), markup=False)
    if problems:
        raise typer.Exit(1)
    console.print(
        f"{len(bundle.infos)} policies in {where} check against the schema of "
        f"{len(registry)} tools and {len(agents)} agents (bundle {bundle.hash[:12]})"
    )


@app.command("test")
def run_cases(
    cases: Annotated[Path, typer.Argument(help="A YAML file of cases: a request and the decision expected.")],
    directory: Annotated[
        Path | None, typer.Option("--policies", help="Default: CHARTER_POLICIES_DIR.")
    ] = None,
) -> None:
    """Run policy unit cases through the policy decision. Exit 1 if any fails."""
    settings = Settings()
    agents, registry = _registry(settings)
    bundle = PolicyBundle.load(directory or settings.policies_dir)
    if bundle.error:
        raise ConfigError(f"the policies do not load: {bundle.error}")
    ctx = Context(bundle, agents, registry)
    failed = 0
    for case in load_cases(cases).cases:
        outcome = run_case(case, ctx)
        mark = "FAIL" if outcome.failures else "ok  "
        detail = (
            "; ".join(outcome.failures)
            or f"{outcome.decision.outcome} by {', '.join(outcome.decision.policy_ids) or '-'}"
        )
        console.print(f"{mark} {case.name}: {detail}", markup=False)
        failed += bool(outcome.failures)
    console.print(f"{failed} failed of {len(load_cases(cases).cases)}")
    if failed:
        raise typer.Exit(1)


@app.command("what-if")
def whatif(
    candidate: Annotated[Path, typer.Argument(help="The candidate policy directory.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write every change, as JSON.")] = Path(
        "what-if.json"
    ),
) -> None:
    """Replay every proposed action in the audit log through the candidate policies, and show
    which decisions would change (allow -> deny, deny -> approval, ...)."""
    settings = Settings()
    agents, registry = _registry(settings)
    bundle = PolicyBundle.load(candidate)
    if bundle.error:
        raise ConfigError(f"the candidate policies do not load: {bundle.error}")
    engine = open_store(settings, "audit")
    with engine.connect() as conn:
        report = what_if(
            (v for _, v, _ in audit.values(conn)), Context(bundle, agents, registry), datetime.now(UTC)
        )
    out.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    console.print(
        f"replayed {report.replayed} proposed actions through {candidate} (bundle {bundle.hash[:12]})"
    )
    transitions = report.transitions()
    if transitions:
        table(["before", "after", "count"], [[a, b, str(n)] for (a, b), n in sorted(transitions.items())])
    console.print(f"{len(report.changes)} would change, {report.unchanged} would not; details in {out}")
    if report.limited:
        console.print(f"{report.limited} were denied by live limits at the time, which are not replayed")
