"""The built wheel, installed into a fresh virtual environment (not editable, nothing of the
repository on the path), is the whole product: its data files travel in it, the CLI answers, the
SDK publishes and reads back on a real broker, and `charter up --demo` runs the demo from an
empty directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from charter.stack.kafka import LocalKafka
from charter.stack.processes import free_port, free_ports
from charter.stack.readiness import SERVICES
from tests.conftest import REPO
from tests.e2e.test_demo import _check

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# The repository's top-level folders a build does not read, and caches anywhere: the build runs
# on a copy, so it writes nothing into the repository.
TOP_ONLY = {".git", ".venv", ".charter", "build", "dist", "tests", "bench", "docs", "site", "node_modules"}
ANYWHERE = shutil.ignore_patterns("*.egg-info", ".*_cache", ".hypothesis", "__pycache__")


def _not_built(folder: str, names: list[str]) -> set[str]:
    top = TOP_ONLY if Path(folder) == REPO else set()
    return (top & set(names)) | set(ANYWHERE(folder, names))


Ran = subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path

    def run(self, *args: str, cwd: Path, timeout: float = 120, **env: str) -> Ran:
        clean = {
            k: v for k, v in os.environ.items() if not k.startswith(("CHARTER_", "PYTHON", "VIRTUAL_ENV"))
        }
        clean["PATH"] = f"{self.bin}{os.pathsep}{clean.get('PATH', '')}"
        return subprocess.run(
            list(args),
            cwd=cwd,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _ok(result: Ran) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=_not_built, symlinks=True)
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("charter-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "--quiet",
            "--disable-pip-version-check",
            "install",
            "-c",
            str(REPO / "constraints.txt"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return Installed(wheel, venv / "bin")


def test_the_wheel_holds_every_file_charter_reads(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    shipped = REPO / "charter"
    for data in [
        *(shipped / "schemas").rglob("*.avsc"),
        *(shipped / "demo" / "files").rglob("*.*"),
        shipped / "stack" / "kafka_pom.xml",
        *(REPO / "services" / "approvals" / "templates").glob("*.html"),
        *(REPO / "services" / "audit" / "migrations").rglob("*.py"),
        REPO / "services" / "audit" / "migrations" / "script.py.mako",
    ]:
        assert str(data.relative_to(REPO)) in names, data
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(installed.wheel).read(meta).decode()
    assert "License-Expression: Apache-2.0" in text
    # Ranges, not pins: the SDK installs beside other packages (the app pins by constraints.txt).
    requires = [
        line for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert requires
    assert not [line for line in requires if "==" in line]


def test_the_installed_cli_answers_from_the_installed_package(installed: Installed, tmp_path: Path) -> None:
    where = _ok(installed.run("python", "-c", "import charter; print(charter.__file__)", cwd=tmp_path))
    assert str(installed.bin.parent) in where, where
    assert _ok(installed.run("charter", "--version", cwd=tmp_path)).strip() == "charter 0.1.0"
    assert "Usage: charter" in _ok(installed.run("charter", "--help", cwd=tmp_path))


SDK_ROUND_TRIP = textwrap.dedent(
    """
    import asyncio
    from datetime import UTC, datetime

    from charter.client import Client
    from charter.stack.up import create_topics
    from charter.config import Settings


    async def main() -> None:
        settings = Settings()
        await create_topics(settings)
        since = datetime.now(UTC)
        async with Client(settings, source="wheel") as client:
            sent = await client.publish("wheel.checked", {"order_id": "W-1001"})
            async for received in client.subscribe("triggers", since=since):
                if received.event.event_id == sent.event_id:
                    print("read back", received.event.name, received.event.data["order_id"])
                    return


    asyncio.run(asyncio.wait_for(main(), 120))
    """
)


def test_the_sdk_publishes_and_reads_back_on_kafka(
    installed: Installed, kafka: LocalKafka, tmp_path: Path
) -> None:
    out = installed.run(
        "python",
        "-c",
        SDK_ROUND_TRIP,
        cwd=tmp_path,
        timeout=180,
        CHARTER_HOME=str(tmp_path / "home"),
        CHARTER_BOOTSTRAP_SERVERS=kafka.bootstrap,
        CHARTER_BROKER="kafka",
        CHARTER_TOPIC_PREFIX=f"charter.wheel{free_port()}.",
    )
    assert _ok(out).strip() == "read back wheel.checked W-1001"


def test_charter_up_demo_runs_from_an_empty_directory(installed: Installed, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _ok(
        installed.run(
            "charter",
            "up",
            "--demo",
            "--once",
            cwd=empty,
            timeout=300,
            CHARTER_HOME=str(tmp_path / "home"),
            CHARTER_API_PORT=str(free_port()),
            CHARTER_METRICS_PORT=str(free_ports(len(SERVICES))),
        )
    )
    # The demo's agents, policies and users, from the package, since the directory has none.
    assert "agents does not exist: the demo uses its own" in out
    assert "users.yaml does not exist: the demo uses its own" in out
    _check(out)
