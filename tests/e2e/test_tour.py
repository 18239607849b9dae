"""The getting-started page, run: every command of its tour, in order, in one shell's state, against
the stack `make run` starts, so the page cannot drift from the product.

The page's conventions, which this test is the reader of:
  - the first `bash` block is the two commands; `make run` is `charter up --demo` (the Makefile
    says so, and this test starts exactly that, in a directory of its own);
  - `<run>` and `<approval>` stand for ids an earlier command printed, as a reader copies them;
  - `# exit N` after a command is the exit code it must end with (0 otherwise);
  - `charter tail` follows until Ctrl-C, and is stopped by one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from charter.stack.processes import free_port, free_ports
from charter.stack.readiness import SERVICES
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

PAGE = REPO / "docs" / "getting-started.md"
# Where each placeholder's value is read from: the output of the commands that print it.
CAPTURES = {
    "<run>": [
        ("charter runs", re.compile(r"^([0-9a-f]{8})\s", re.M)),
        ("charter publish", re.compile(r"\(run ([0-9a-f-]{36})\)")),
    ],
    "<approval>": [("charter approvals list", re.compile(r"^([0-9a-f]{8})\s", re.M))],
}
# Commands whose output a reader may have to ask again for, because what they show is still on
# its way (the page says so): asked again until it holds, for a bounded time.
SETTLES: dict[str, Callable[[str], bool]] = {
    "charter approvals list": lambda out: re.search(r"^[0-9a-f]{8}\s", out, re.M) is not None,
    "charter runs show": lambda out: "RunCompleted" in out or "RunFailed" in out,
    "charter audit export": lambda out: "not covered by a signed head yet" not in out,
}


def bash_blocks(text: str) -> list[list[str]]:
    return [
        [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
    ]


def expected_exit(line: str) -> int:
    match = re.search(r"#\s*exit (\d+)\s*$", line)
    return int(match.group(1)) if match else 0


@dataclass
class Shell:
    """One reader's terminal: each line runs in bash, and what it exports or unsets carries on."""

    cwd: Path
    env: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)

    def command(self, line: str) -> str:
        for placeholder in CAPTURES:
            if placeholder in line:
                assert placeholder in self.ids, f"{line!r}: no earlier command printed a {placeholder}"
                line = line.replace(placeholder, self.ids[placeholder])
        return line

    def run(self, line: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        state = self.cwd / ".tour-env"
        script = f"{line}\n__status=$?\nenv -0 > {state}\nexit $__status\n"
        result = subprocess.run(
            ["bash", "-c", script],
            check=False,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if state.exists():
            pairs = (item.split("=", 1) for item in state.read_text().split("\0") if "=" in item)
            self.env = dict(pairs)
            state.unlink()
        return result

    def remember(self, line: str, out: str) -> None:
        for placeholder, sources in CAPTURES.items():
            for prefix, pattern in sources:
                if line.startswith(prefix) and (found := pattern.search(out)):
                    self.ids[placeholder] = found.group(1)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Shell]:
    """`make run`, in a directory of its own: the repository's agents, policies and users (as a
    reader's clone has them), the venv the tests run in, free ports, the default broker."""
    for name in ("agents", "policies"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "users.yaml", tmp_path / "users.yaml")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env.update(
        CHARTER_API_PORT=str(free_port()),
        CHARTER_METRICS_PORT=str(free_ports(len(SERVICES))),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "up.out"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "charter", "up", "--demo"], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 240
        while "running; Ctrl-C to stop" not in log.read_text():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield Shell(tmp_path, env)
        # The page's last step: Ctrl-C stops everything within 10 s.
        started = time.monotonic()
        up.send_signal(signal.SIGINT)
        up.wait(30)
        assert time.monotonic() - started < 10, log.read_text()[-2000:]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_the_two_commands_are_what_the_tour_starts() -> None:
    first = bash_blocks(PAGE.read_text())[0]
    assert [line.split("#")[0].strip() for line in first] == ["make run", "make test"]
    recipe = re.search(r"^run: .*\n\t(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert recipe is not None
    assert recipe.group(1) == "$(BIN)/charter up --demo"


@pytest.mark.kafka  # the broker `make run` starts wherever Java 17 runs, as here and in CI
def test_every_command_of_the_getting_started_page_does_what_it_says(stack: Shell) -> None:
    lines = [line for block in bash_blocks(PAGE.read_text())[1:] for line in block]
    assert len(lines) >= 20, lines
    for line in lines:
        command = stack.command(line)
        if line.startswith("charter tail"):
            _follow_then_interrupt(stack, command)
            continue
        settles = next((check for prefix, check in SETTLES.items() if line.startswith(prefix)), None)
        deadline = time.monotonic() + 60
        while True:
            result = stack.run(command)
            out = result.stdout + result.stderr
            if settles is None or settles(out) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert result.returncode == expected_exit(line), f"{command}\nexited {result.returncode}:\n{out}"
        stack.remember(line, result.stdout)
        if settles is not None:
            assert settles(out), f"{command} never showed what the page says:\n{out}"
    # What the page says of the runs it made: the approved refund and the one from a file
    # completed; the one under the kill switch was refused by policy.
    listing = stack.run("charter runs --limit 50").stdout
    assert "kill switch on for agent support-refunds" in listing, listing
    assert (stack.cwd / "run.zip").exists()
    assert (stack.cwd / "what-if.json").exists()


def _follow_then_interrupt(shell: Shell, command: str) -> None:
    follower = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=shell.cwd,
        env=shell.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert follower.stdout is not None
    seen = [follower.stdout.readline() for _ in range(3)]
    follower.send_signal(signal.SIGINT)
    rest, _ = follower.communicate(timeout=30)
    assert all(" runs " in line or " actions.results " in line for line in seen), [*seen, rest]
    # Ctrl-C is how a follow ends, not an interruption of it.
    assert follower.returncode == 0, [*seen, rest]
