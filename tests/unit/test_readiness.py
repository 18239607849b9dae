"""A stack is ready when every service of the instance has said so and still runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from charter.config import Settings
from charter.stack import readiness


def test_ready_only_when_every_service_is_and_its_process_runs(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert not readiness.all_ready(settings)
    for name in readiness.SERVICES[:-1]:
        readiness.mark(settings, name)
    assert not readiness.all_ready(settings)  # one has not joined yet
    readiness.mark(settings, readiness.SERVICES[-1])
    assert readiness.all_ready(settings)
    # A mark left by a process that has since died does not count.
    script = "import os; print(os.getpid())"
    gone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    path = tmp_path / "run" / "ready" / f"{readiness.SERVICES[0]}@{settings.instance}"
    path.write_text(f"{int(gone.stdout)} 0\n")
    assert not readiness.all_ready(settings)
    path.write_text(f"{os.getpid()} 0\n")
    assert readiness.all_ready(settings)


def test_another_instances_marks_do_not_count(tmp_path: Path) -> None:
    other = Settings(home=tmp_path, instance="other")
    for name in readiness.SERVICES:
        readiness.mark(other, name)
    assert not readiness.all_ready(Settings(home=tmp_path, instance="mine"))
