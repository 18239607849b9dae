"""Bad input to the CLI: one line on stderr, a non-zero exit, and no traceback. No broker needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from charter.cli import exits
from tests.conftest import REPO

CLI = [sys.executable, "-m", "charter"]


def charter(*args: str, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["CHARTER_HOME"] = str(home)
    env["CHARTER_USERS_FILE"] = str(REPO / "users.yaml")
    env.update(extra)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["bogus"], "No such command", exits.USAGE),
        (["publish"], "Missing argument", exits.USAGE),
        (["publish", "x.y", "--data", "{not json"], "not valid JSON", exits.USAGE),
        (["publish", "x.y", "--data", "[1, 2]"], "must be a JSON object", exits.USAGE),
        (["publish", "x.y", "--data", "@/nonexistent.json"], "cannot read", exits.USAGE),
        (["publish", "x.y", "--data", "{}"], "no API token", exits.REFUSED),
        (["publish", "x.y", "--data", "{}", "--offline"], "no broker", exits.UNAVAILABLE),
        (["publish", "x.y", "--data", "{}", "--as", "sam"], "use it only with --offline", exits.USAGE),
        (["replay", "--topic", "runs"], "give one of --from-beginning", exits.USAGE),
        (["replay", "--topic", "runs", "--from-beginning", "--from-offset", "3"], "give one of", exits.USAGE),
        (
            ["replay", "--topic", "runs", "--run", "r", "--to", "actions.approved"],
            "only with --into-live",
            exits.USAGE,
        ),
        (["dlq", "list", "nope"], "unknown topic", exits.USAGE),
        (["replay", "--topic", "runs", "--from-offset", "-1"], "greater than or equal to 0", exits.USAGE),
        (["runs"], "no API token", exits.REFUSED),
        (["run", "show", "abcd"], "no API token", exits.REFUSED),
        (["runs", "list"], "no API token", exits.REFUSED),
        (["runs", "show", "abcd"], "no API token", exits.REFUSED),
        (["runs", "list", "--offline"], "no audit store", exits.UNAVAILABLE),
        (["runs", "--offline"], "no audit store", exits.UNAVAILABLE),
        (["run", "show", "--offline", "abcd"], "no audit store", exits.UNAVAILABLE),
        (["agents"], "no audit store", exits.UNAVAILABLE),
        (["agents", "--days", "0"], "--days", exits.USAGE),
        (["approvals", "list"], "no API token: set CHARTER_TOKEN", exits.REFUSED),
        (["approvals", "approve", "abcd"], "no API token", exits.REFUSED),
        (["approvals", "list", "--status", "nope"], "--status must be one of", exits.USAGE),
        (["tokens", "create", "--user", "dana"], "no API token: set CHARTER_TOKEN", exits.REFUSED),
        (["tokens", "list"], "no API token", exits.REFUSED),
        (["tokens", "revoke", "nope"], "no API token", exits.REFUSED),
        (["kill-switch", "on", "--reason", "r"], "no API token", exits.REFUSED),
        (["tokens", "create", "--offline", "--user", "nobody"], "no user 'nobody'", exits.NOT_FOUND),
        (
            ["tokens", "create", "--offline", "--user", "dana", "--role", "admin"],
            "dana does not hold admin",
            exits.USAGE,
        ),
        (["tokens", "create", "--user", "dana", "--expires-in", "soon"], "--expires-in takes", exits.USAGE),
        (["tokens", "revoke", "--offline", "nope"], "no active token nope", exits.NOT_FOUND),
        (["audit", "verify"], "no audit store", exits.UNAVAILABLE),
    ],
)
def test_bad_input_gets_one_line_and_its_exit_code(
    args: list[str], message: str, code: int, tmp_path: Path
) -> None:
    result = charter(*args, home=tmp_path)
    assert result.returncode == code, result.stderr
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
    result = charter(*command, "--help", home=tmp_path, COLUMNS="80")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    # Each subcommand's summary is its whole first sentence, wrapped, never cut with "...".
    listed = result.stdout.partition("Commands:")[2]
    assert not [line for line in listed.splitlines() if line.endswith("...")], listed


def test_version_is_the_installed_distributions(tmp_path: Path) -> None:
    result = charter("--version", home=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"charter {version('charter')}"


def test_the_help_gives_the_exit_codes_of_the_table(tmp_path: Path) -> None:
    said = " ".join(charter("--help", home=tmp_path).stdout.split())
    for code, meaning in (
        (exits.FAILED, "a failure found"),
        (exits.USAGE, "usage or bad input"),
        (exits.NOT_FOUND, "not found"),
        (exits.REFUSED, "refused by the API"),
        (exits.UNAVAILABLE, "the stack cannot be reached"),
    ):
        assert f"{code} {meaning}" in said


def test_the_contract_commands_exist() -> None:
    paths = {" ".join(c) for c in _commands()}
    expected = {
        "up",
        "publish",
        "tail",
        "runs",
        "runs list",
        "runs show",
        "runs resume",
        "runs cancel",
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
