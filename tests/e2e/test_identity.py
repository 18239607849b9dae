"""People act only as who their credential says, through the API: kill switches, tokens and
the runs they may read, from the CLI, refused without a credential and with the wrong role."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

ACTS = {
    "kill-switch on": ["kill-switch", "on", "--agent", "support-refunds", "--reason", "should not happen"],
    "tokens create": ["tokens", "create", "--user", "sam", "--description", "should not happen"],
    "tokens list": ["tokens", "list"],
    "runs": ["runs"],
    "run show": ["run", "show", "abcd"],
}


def _cli(stack: Stack, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charter", *args],
        capture_output=True,
        text=True,
        env={**stack.env, **env},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("act", list(ACTS))
def test_each_act_is_refused_without_a_credential(stack: Stack, act: str, tmp_path: Path) -> None:
    # No token at all: nothing in CHARTER_TOKEN, and no operator token where the keys are.
    bare = _cli(stack, ACTS[act], CHARTER_KEYS_DIR=str(tmp_path))
    assert bare.returncode == 2
    assert "no API token" in bare.stderr
    # A token that is not one: the API says who is unknown.
    forged = _cli(stack, ACTS[act], CHARTER_TOKEN="chr_0123456789abcdef_forged")
    assert forged.returncode == 2
    assert "HTTP 401 unauthenticated" in forged.stderr


@pytest.mark.parametrize("act", list(ACTS))
def test_each_act_is_refused_with_the_wrong_role(stack: Stack, act: str) -> None:
    # sam publishes business events, and may do nothing else.
    refused = stack.as_user("sam", *ACTS[act], check=False)
    assert refused.returncode == 2
    assert "HTTP 403 forbidden" in refused.stderr
    assert "sam (publisher) may not" in refused.stderr


def test_an_approver_may_not_set_a_switch_or_issue_tokens(stack: Stack) -> None:
    for act in ("kill-switch on", "tokens create"):
        refused = stack.as_user("dana", *ACTS[act], check=False)
        assert refused.returncode == 2
        assert "HTTP 403 forbidden" in refused.stderr


def test_the_operator_token_charter_up_made_acts_as_the_first_admin(stack: Stack) -> None:
    token = stack.settings.keys / "operator.token"
    assert token.stat().st_mode & 0o777 == 0o600
    issued = stack.cli("tokens", "create", "--user", "lee", "--description", "by the operator").stdout
    assert "for lee (finance)" in issued
    listed = stack.cli("tokens", "list").stdout
    assert "charter up: the operator's first admin token" in listed
