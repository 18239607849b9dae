"""The security team's tools: the generated Cedar schema, `policy check` naming file and line,
policy unit cases, and what-if over recorded history."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from charter import agents, serde, tools
from charter.events import Event
from charter.tools import http_tool
from services.policy.bundle import PolicyBundle
from services.policy.check import Case, check, load_cases, policy_lines, run_case
from services.policy.decide import Context, decide
from services.policy.limits import Usage
from services.policy.resources import ResourceCatalog
from services.policy.schema import cedar_schema
from services.policy.whatif import what_if
from tests.conftest import REPO
from tests.unit.test_policy import refund

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
TOOLS = tools.load(["charter.demo.tools"])
AGENTS = agents.load(REPO / "agents", TOOLS)


class Shapes(BaseModel):
    count: int
    ratio: float
    tags: list[str]
    mode: Literal["a", "b"]
    note: str | None = None
    flag: bool = False


def test_the_schema_describes_each_tools_parameters() -> None:
    spec = http_tool("shapes", method="POST", url="http://x/", params=Shapes)
    schema = cedar_schema([spec], ResourceCatalog())
    context = schema[""]["actions"]["shapes"]["appliesTo"]["context"]["attributes"]
    params = context["parameters"]["attributes"]
    assert params["count"] == {"type": "Long"}
    assert params["ratio"] == {"type": "Extension", "name": "decimal"}
    assert params["tags"] == {"type": "Set", "element": {"type": "String"}}
    assert params["mode"] == {"type": "String"}
    assert params["note"] == {"type": "String", "required": False}
    assert params["flag"] == {"type": "Boolean", "required": False}
    assert context["environment"] == {"type": "String"}


def test_policy_lines_skip_comments_and_strings() -> None:
    text = (
        '// one; two\n@id("a;b")\npermit (principal, action, resource);\n\n'
        'forbid (p, a, r)\nwhen { "x;" == "y" };\n'
    )
    assert policy_lines(text) == [2, 5]


def test_the_shipped_policies_check_clean() -> None:
    bundle, problems = check(REPO / "policies", AGENTS, TOOLS)
    assert problems == []
    assert len(bundle.infos) >= 10


def test_check_names_file_line_and_policy_of_each_mistake(tmp_path: Path) -> None:
    policies = tmp_path / "p"
    shutil.copytree(REPO / "policies", policies)
    refunds = policies / "refunds.cedar"
    original = refunds.read_text()
    small_at = original.split("\n").index('@id("refund-small")') + 1
    text = original.replace("amount <= 100 }", "amout <= 100 }")
    appended_at = text.count("\n") + 2
    typo = '@id("typo-tool")\npermit (principal, action == Action::"delete_customer", resource);\n'
    refunds.write_text(text + "\n" + typo)
    (policies / "limits.yaml").write_text("agents: {ghost: {max_steps: 3}}\n")
    _, problems = check(policies, AGENTS, TOOLS)
    found = [str(p) for p in problems]
    assert any(t.startswith(f"{refunds}:{small_at}: refund-small:") and "amout" in t for t in found), found
    assert any(f":{appended_at}: typo-tool:" in t and "delete_customer" in t for t in found), found
    assert any("limits.yaml" in t and "unknown agent 'ghost'" in t for t in found), found


def test_the_shipped_cases_pass_and_a_wrong_expectation_fails() -> None:
    ctx = Context(PolicyBundle.load(REPO / "policies"), AGENTS, TOOLS)
    cases = load_cases(REPO / "policies" / "tests" / "cases.yaml").cases
    assert all(not run_case(c, ctx, NOW).failures for c in cases)
    wrong = Case(
        name="wrong",
        agent="support-refunds",
        tool="issue_refund",
        resource="order/A-1001",
        parameters={"order_id": "A-1001", "amount": 9000, "currency": "EUR"},
        expect="allow",
        policies=["refund-small"],
    )
    assert run_case(wrong, ctx, NOW).failures == [
        "expected allow, got deny",
        "expected policies ['refund-small'], got ['refund-over-limit']",
    ]


def _rows(events: list[Event]) -> list[bytes]:
    return [serde.encode(e) for e in events]


def test_what_if_reports_the_decisions_a_candidate_would_change(tmp_path: Path) -> None:
    current = Context(PolicyBundle.load(REPO / "policies"), AGENTS, TOOLS)
    history: list[Event] = []
    for n, amount in enumerate([40, 90, 700, 9000]):
        proposal = refund(amount, run=f"run-{n}")
        history += [proposal, *decide(proposal, current, Usage(), NOW)]
    candidate = tmp_path / "candidate"
    shutil.copytree(REPO / "policies", candidate)
    cedar = candidate / "refunds.cedar"
    lowered = (
        cedar.read_text()
        .replace("amount <= 100 }", "amount <= 50 }")
        .replace("amount > 100 &&", "amount > 50 &&")
    )
    cedar.write_text(lowered)
    report = what_if(_rows(history), Context(PolicyBundle.load(candidate), AGENTS, TOOLS), NOW)
    assert report.replayed == 4
    assert dict(report.transitions()) == {("allow", "approval"): 1}
    [change] = report.changes
    assert change.run_id == "run-1"
    assert change.after_policies == ["refund-large"]
    assert report.as_json()["transitions"] == {"allow -> approval": 1}
