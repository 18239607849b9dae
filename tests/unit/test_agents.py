from __future__ import annotations

from pathlib import Path

import pytest

from charter import agents, tools
from charter.errors import ConfigError
from tests.conftest import REPO

DEMO_TOOLS = tools.load(["charter.demo.tools"])


def test_the_demo_agents_load() -> None:
    loaded = agents.load(REPO / "agents", DEMO_TOOLS)
    assert set(loaded) == {"support-refunds", "support-assistant", "it-access", "it-access-staging"}
    refunds = loaded["support-refunds"]
    assert [s.id for s in refunds.steps] == ["lookup", "refund", "notify"]
    assert refunds.roles == ["support"]
    assistant = loaded["support-assistant"]
    assert assistant.reasons
    assert assistant.llm is not None
    assert assistant.llm.max_errors == 3


HEAD = """
id: a
owner: o
description: d
environment: staging
triggers: [{event: e}]
tools: [lookup_order]
"""
LLM = HEAD


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (LLM + "plan: llm\n", "needs an `llm:` section and no steps"),
        (LLM + "plan: llm\nllm: {instructions: x}\nsteps: [{id: s, tool: lookup_order}]\n", "no steps"),
        (LLM + "plan: llm\nllm: {instructions: x, resources: {issue_refund: r}}\n", "does not hold"),
        (LLM + "plan: llm\nllm: {instructions: x, max_turns: 0}\n", "llm.max_turns"),
        (LLM + "llm: {instructions: x}\nsteps: [{id: s, tool: lookup_order}]\n", "no `llm:` section"),
        (LLM + "steps: [{id: s, tool: lookup_order, when: 'trigger.x >'}]\n", "a.yaml"),
        (LLM + "steps: [{id: s}]\n", "exactly one of tool, handoff and wait"),
        (LLM + "steps: [{id: s, handoff: {agent: b}}]\n", "not in `handoffs`"),
        (LLM + "handoffs: [b]\nsteps: [{id: s, handoff: {agent: b}}]\n", "unknown agent"),
        (LLM + "steps: [{id: s, wait: {event: e, field: f, key: k, timeout_s: 0}}]\n", "timeout_s"),
        (
            LLM + "steps: [{id: s, wait: {event: e, field: f, key: k, timeout_s: 1}, parameters: {a: 1}}]\n",
            "only a tool step",
        ),
    ],
)
def test_a_bad_plan_is_refused_with_the_reason(tmp_path: Path, body: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        agents.load(_write(tmp_path, body), DEMO_TOOLS)


def test_a_model_planned_agent_loads(tmp_path: Path) -> None:
    body = (
        LLM + "plan: llm\nllm: {instructions: x, resources: {lookup_order: 'order/{{ params.order_id }}'}}\n"
    )
    [agent] = agents.load(_write(tmp_path, body), DEMO_TOOLS).values()
    assert agent.steps == []


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "a.yaml").write_text(body)
    return tmp_path


BASE = (
    HEAD
    + """steps: [{id: s, tool: lookup_order, parameters: {order_id: "{{ trigger.id }}"}}]
"""
)


def test_a_good_file_loads(tmp_path: Path) -> None:
    assert set(agents.load(_write(tmp_path, BASE), DEMO_TOOLS)) == {"a"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("tools: [lookup_order]", "tools: [nope]"), "a.yaml: agent: .*does not hold"),
        (("tools: [lookup_order]", "tools: [lookup_order, nope]"), "unknown tool\\(s\\) nope"),
        (('"{{ trigger.id }}"', '"{{ trigger. }}"'), "a.yaml"),
        (("owner: o", "owner: o\nsurprise: 1"), "surprise"),
        (("id: a", "id: A B"), "id"),
        (("steps: [", "steps: [{id: s, tool: lookup_order}, "), "unique"),
    ],
)
def test_a_bad_file_is_named_with_the_reason(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        agents.load(_write(tmp_path, BASE.replace(*change)), DEMO_TOOLS)


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        agents.load(tmp_path / "none", DEMO_TOOLS)


def test_yaml_syntax_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"a\.yaml"):
        agents.load(_write(tmp_path, "id: [unclosed"), DEMO_TOOLS)
