"""The supervisor with stand-in children: restarts with backoff, stops by force, leaves no orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from charter.stack import processes
from charter.stack import supervisor as sup
from charter.stack.processes import spawn

PY = sys.executable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_a_crashing_child_is_restarted_with_growing_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sup, "FIRST_BACKOFF_S", 0.05)
    said: list[str] = []
    s = sup.Supervisor(
        {"crasher": [PY, "-c", "raise SystemExit(3)"]}, tmp_path, dict(os.environ), said.append
    )
    s.start_all()
    deadline = time.monotonic() + 10
    while s.children["crasher"].restarts < 3 and time.monotonic() < deadline:
        s.poll()
        time.sleep(0.01)
    s.stop_all(1)
    assert s.children["crasher"].restarts >= 3
    assert "exited with code 3" in said[0]
    delays = [float(line.split("restarting in ")[1].split("s")[0]) for line in said[:3]]
    assert delays == sorted(delays)
    assert delays[0] < delays[2]


def test_a_child_that_had_got_ready_is_restarted_without_growing_backoff(tmp_path: Path) -> None:
    said: list[str] = []
    ready: dict[str, int] = {}
    s = sup.Supervisor(
        {"killed": [PY, "-c", "raise SystemExit(9)"]},
        tmp_path,
        dict(os.environ),
        said.append,
        ready=lambda: ready,
    )
    s.start_all()
    deadline = time.monotonic() + 10
    while s.children["killed"].restarts < 3 and time.monotonic() < deadline:
        child = s.children["killed"]
        if child.proc is not None:
            ready["killed"] = child.proc.pid  # each process says it is ready before it dies
        s.poll()
        time.sleep(0.01)
    s.stop_all(1)
    delays = {float(line.split("restarting in ")[1].split("s")[0]) for line in said[:3]}
    assert delays == {sup.FIRST_BACKOFF_S}


def test_a_child_that_ignores_sigterm_is_killed_at_the_deadline(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)"
    )
    s = sup.Supervisor(
        {"stubborn": [PY, "-c", stubborn], "polite": [PY, "-c", "import time; time.sleep(60)"]},
        tmp_path,
        dict(os.environ),
        print,
    )
    s.start_all()
    log = tmp_path / "stubborn.log"
    while "up" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.01)
    pids = [p for p in s.pids().values() if p]
    started = time.monotonic()
    killed = s.stop_all(deadline_s=1.0)
    assert time.monotonic() - started < 3
    assert killed == ["stubborn"]
    assert not any(_alive(p) for p in pids)


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    # A parent that spawns a long-lived child the way the supervisor does, then is SIGKILLed.
    parent = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from charter.stack.processes import spawn
        child = spawn([{PY!r}, "-c", "import time; time.sleep(60)"], Path({str(tmp_path / "c.log")!r}))
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen([PY, "-c", parent], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        child_pid = int(proc.stdout.readline())
        assert _alive(child_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child_pid)


def test_spawn_writes_output_to_the_log(tmp_path: Path) -> None:
    proc = spawn([PY, "-c", "print('hello')"], tmp_path / "logs" / "x.log")
    proc.wait()
    assert (tmp_path / "logs" / "x.log").read_text() == "hello\n"


def test_free_ports_lie_outside_the_kernels_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "_ephemeral", lambda: (32_768, 60_999))
    for _ in range(20):
        first = processes.free_ports(5)
        assert not (first + 4 >= 32_768 and first <= 60_999), first  # no connection takes them
    # A machine whose range leaves no room outside it: the kernel's choice, as before.
    monkeypatch.setattr(processes, "_ephemeral", lambda: (1_024, 65_535))
    assert 1_024 <= processes.free_port() <= 65_535
