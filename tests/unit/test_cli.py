"""Bad input to the CLI: one line on stderr, a non-zero exit, and no traceback. No broker needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CLI = [sys.executable, "-m", "charter"]


def charter(*args: str, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["CHARTER_HOME"] = str(home)
    env["CHARTER_USERS_FILE"] = str(REPO / "users.yaml")
    env.update(extra)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "No such command"),
        (["publish"], "Missing argument"),
        (["publish", "x.y", "--data", "{not json"], "not valid JSON"),
        (["publish", "x.y", "--data", "[1, 2]"], "must be a JSON object"),
        (["publish", "x.y", "--data", "@/nonexistent.json"], "cannot read"),
        (["publish", "x.y", "--data", "{}"], "no API token"),
        (["publish", "x.y", "--data", "{}", "--offline"], "no broker"),
        (["publish", "x.y", "--data", "{}", "--as", "sam"], "use it only with --offline"),
        (["replay", "--topic", "runs"], "give one of --from-beginning"),
        (["replay", "--topic", "runs", "--from-beginning", "--from-offset", "3"], "give one of"),
        (["replay", "--topic", "runs", "--run", "r", "--to", "actions.approved"], "only with --into-live"),
        (["replay", "--topic", "nope", "--from-beginning"], "unknown topic"),
        (["replay", "--topic", "runs", "--from-offset", "-1"], "greater than or equal to 0"),
        (["runs"], "no API token"),
        (["run", "show", "abcd"], "no API token"),
        (["runs", "--offline"], "no audit store"),
        (["run", "show", "--offline", "abcd"], "no audit store"),
        (["agents"], "no audit store"),
        (["agents", "--days", "0"], "--days"),
        (["approvals", "list"], "no API token: set CHARTER_TOKEN"),
        (["approvals", "approve", "abcd"], "no API token"),
        (["approvals", "list", "--status", "nope"], "--status must be one of"),
        (["tokens", "create", "--user", "dana"], "no API token: set CHARTER_TOKEN"),
        (["tokens", "list"], "no API token"),
        (["tokens", "revoke", "nope"], "no API token"),
        (["kill-switch", "on", "--reason", "r"], "no API token"),
        (["tokens", "create", "--offline", "--user", "nobody"], "no user 'nobody'"),
        (["tokens", "create", "--offline", "--user", "dana", "--role", "admin"], "dana does not hold admin"),
        (["tokens", "create", "--user", "dana", "--expires-in", "soon"], "--expires-in takes"),
        (["tokens", "revoke", "--offline", "nope"], "no active token nope"),
        (["audit", "verify"], "no audit store"),
    ],
)
def test_bad_input_gets_one_line_and_a_nonzero_exit(args: list[str], message: str, tmp_path: Path) -> None:
    result = charter(*args, home=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("charter: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def _commands() -> list[list[str]]:
    """Every command path of the CLI, read from the app itself so none can be missed."""
    import typer.main

    from charter.cli import app

    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "charter")
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    result = charter(*command, "--help", home=tmp_path)
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_the_contract_commands_exist() -> None:
    paths = {" ".join(c) for c in _commands()}
    expected = {
        "up",
        "publish",
        "tail",
        "runs",
        "run show",
        "approvals list",
        "approvals approve",
        "approvals reject",
        "audit verify",
        "replay",
        "tokens create",
        "tokens revoke",
    }
    assert expected <= paths


def test_policy_check_and_test_on_the_shipped_policies(tmp_path: Path) -> None:
    env = {"CHARTER_AGENTS_DIR": str(REPO / "agents"), "CHARTER_POLICIES_DIR": str(REPO / "policies")}
    checked = charter("policy", "check", home=tmp_path, **env)
    assert checked.returncode == 0, checked.stderr
    assert "check against the schema of 5 tools" in checked.stdout
    tested = charter("policy", "test", str(REPO / "policies" / "tests" / "cases.yaml"), home=tmp_path, **env)
    assert tested.returncode == 0, tested.stdout
    assert tested.stdout.strip().endswith("0 failed of 14")


def test_policy_check_fails_naming_the_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "policies"
    shutil.copytree(REPO / "policies", broken)
    (broken / "extra.cedar").write_text(
        '\n\n@id("oops")\npermit (principal, action == Action::"nope", resource);\n'
    )
    result = charter("policy", "check", str(broken), home=tmp_path, CHARTER_AGENTS_DIR=str(REPO / "agents"))
    assert result.returncode == 1
    assert f"{broken / 'extra.cedar'}:3: oops: " in result.stdout
