"""A local Apache Kafka: single-node KRaft on the machine's Java 17, from the official server
jars on Maven Central (charter/stack/kafka_pom.xml), fetched once with Maven and cached.

It is the broker production runs, so the test suite proves every guarantee on it, and
`charter up --broker kafka` runs the whole stack on it. Its data persists under its work
directory, so a restart keeps topics, offsets and groups, as a real cluster would.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from charter.errors import ConfigError
from charter.stack.processes import free_port, spawn, stop

POM = Path(__file__).resolve().parent / "kafka_pom.xml"
STARTED = "Kafka Server started"
JAVA = 17
Say = Callable[[str], None]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "charter" / "kafka" / hashlib.sha256(POM.read_bytes()).hexdigest()[:12]


def fetch(say: Say = lambda _: None) -> Path:
    """The Kafka jars, fetched with Maven the first time (about 55 MB), then from the cache."""
    libs = cache_dir() / "libs"
    if (cache_dir() / ".complete").exists():
        return libs
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise ConfigError(f"{tool} is needed to run Apache Kafka locally (Java 17 and Maven)")
    say(f"fetching Apache Kafka from Maven Central into {libs} (once)")
    staging = cache_dir() / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        errors = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "ERROR" in line or "FATAL" in line
        ]
        raise ConfigError(f"Maven could not fetch Apache Kafka: {' '.join(errors[:2])[:400]}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (cache_dir() / ".complete").touch()
    return libs


def java_major() -> int | None:
    """The major version of the `java` on the PATH, or None if there is none."""
    if shutil.which("java") is None:
        return None
    shown = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, check=False)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', shown.stderr + shown.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8" is Java 8


def unavailable() -> str | None:
    """Why Apache Kafka cannot run here, or None when it can: Java 17 or later, and its jars
    cached or Maven to fetch them."""
    major = java_major()
    if major is None:
        return "no Java runtime on the PATH"
    if major < JAVA:
        return f"Java {major} on the PATH; Kafka needs {JAVA} or later"
    if not (cache_dir() / ".complete").exists() and shutil.which("mvn") is None:
        return "its jars are not cached and there is no Maven to fetch them"
    return None


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url. Like Kafka's own Uuid.randomUuid, never
    one starting with '-', which the storage tool would read as an option."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not candidate.startswith("-"):
            return candidate


class LocalKafka:
    def __init__(self, workdir: Path, log: Path, port: int = 0, heap_mb: int = 512) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self._log = log
        self._heap_mb = heap_mb
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms128m",
            f"-Xmx{self._heap_mb}m",
            "-XX:+UseSerialGC",  # two cores: no parallel collector threads competing with services
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _configure(self) -> Path:
        controller = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"controller.quorum.voters=1@127.0.0.1:{controller}",
                    f"log.dirs={self.workdir / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=3",
                    # Charter creates every topic itself, with its partition count.
                    "auto.create.topics.enable=false",
                    "group.initial.rebalance.delay.ms=0",
                ]
            )
            + "\n"
        )
        (self.workdir / "log4j2.properties").write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.out.type = Console",
                    "appender.out.name = OUT",
                    "appender.out.layout.type = PatternLayout",
                    "appender.out.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = WARN",
                    "rootLogger.appenderRef.out.ref = OUT",
                    "logger.server.name = kafka.server.KafkaRaftServer",
                    "logger.server.level = INFO",
                ]
            )
            + "\n"
        )
        return config

    def start(self, timeout_s: float = 90.0, say: Say = lambda _: None) -> str:
        libs = fetch(say)
        config = self._configure()
        if not (self.workdir / "data" / "meta.properties").exists():
            formatted = subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)),
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if formatted.returncode != 0:
                raise ConfigError(
                    f"Kafka storage format failed: {formatted.stdout[-300:]}{formatted.stderr[-300:]}"
                )
        self._log.parent.mkdir(parents=True, exist_ok=True)
        self._log.write_bytes(b"")
        self._proc = spawn(self._java(libs, "kafka.Kafka", str(config)), self._log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(f"Kafka exited with code {self._proc.returncode}; see {self._log}")
            if STARTED in self._log.read_text(errors="replace"):
                return self.bootstrap
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"Kafka did not start within {timeout_s:.0f}s; see {self._log}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._proc is None:
            return
        stop(self._proc, timeout_s)


def tool(main: str, *args: str, timeout_s: float = 60.0) -> str:
    """Run one of Kafka's own command-line tools (by main class) from the cached jars."""
    libs = fetch()
    result = subprocess.run(
        ["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", f"{libs}/*", main, *args],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise ConfigError(f"{main} failed: {result.stderr[-500:]}")
    return result.stdout
