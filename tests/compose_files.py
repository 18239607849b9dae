"""The compose files as docker-compose itself reads them: merged and interpolated by Debian's
`docker-compose` (which .ci/run installs; its absence fails the test, it does not skip)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import yaml

from tests.conftest import REPO

BASE = "docker-compose.yml"
DEMO = "docker-compose.demo.yml"


def compose_config(*files: str) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    assert binary is not None, "docker-compose is not installed (apt-get install docker-compose)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    result = subprocess.run(
        [binary, *(a for f in files for a in ("-f", f)), "config"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))
