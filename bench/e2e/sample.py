"""What the processes cost: CPU and memory sampled while the load runs, and CPU per action."""

from __future__ import annotations

import statistics
import threading
import time

import psutil  # type: ignore[import-untyped]

SAMPLE_S = 0.5
SATURATED_PCT = 90.0
MACHINE = {"machine", "machine steal"}  # not processes: the whole machine's busy and stolen time


class Sampler(threading.Thread):
    """CPU (% of one core since the last sample) and RSS of some processes, every 0.5 s."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if psutil.pid_exists(pid)}
        self.samples: list[tuple[float, str, float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        for proc in self.procs.values():
            proc.cpu_percent(None)
        psutil.cpu_times_percent(None)
        while not self._halt.wait(SAMPLE_S):
            now = time.monotonic()
            for name, proc in self.procs.items():
                try:
                    with proc.oneshot():
                        self.samples.append((now, name, proc.cpu_percent(None), proc.memory_info().rss))
                except psutil.Error:
                    continue
            # The whole machine, in % of one core: others share it, and this says how much they
            # took; steal is time the hypervisor gave this VM's cores to someone else.
            times = psutil.cpu_times_percent(None)
            cores = psutil.cpu_count() or 1
            self.samples.append((now, "machine", (100 - times.idle) * cores, 0))
            self.samples.append((now, "machine steal", getattr(times, "steal", 0.0) * cores, 0))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def window(self, start: float, end: float) -> dict[str, dict[str, float]]:
        cpu: dict[str, list[float]] = {}
        rss: dict[str, int] = {}
        for at, name, pct, size in self.samples:
            if start <= at <= end:
                cpu.setdefault(name, []).append(pct)
                rss[name] = max(rss.get(name, 0), size)
        return {
            name: {"cpu_pct": round(statistics.fmean(v), 1), "rss_mb": round(rss[name] / 2**20, 1)}
            for name, v in cpu.items()
        }


def _cpu_per_action(
    processes: dict[str, dict[str, float]], idle: dict[str, dict[str, float]], rate: float
) -> dict[str, float]:
    """CPU milliseconds each process spends per governed action, above its idle cost."""
    if not rate:
        return {}
    per = {
        name: max(0.0, v["cpu_pct"] - idle.get(name, {}).get("cpu_pct", 0.0)) * 10 / rate
        for name, v in processes.items()
        if name not in {*MACHINE, "supervisor"}
    }
    stack = sum(v for k, v in per.items() if k != "bench client")
    return {k: round(v, 2) for k, v in per.items()} | {"stack total": round(stack, 2)}
