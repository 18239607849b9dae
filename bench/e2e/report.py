"""The results for people: the machine they came from, the tables printed, the plot saved."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from rich import box
from rich.table import Table

from bench.e2e import console
from bench.e2e.sample import MACHINE, SATURATED_PCT


def _machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")
    ]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _top(stages: list[dict[str, Any]]) -> dict[str, Any]:
    return max(stages, key=lambda s: s["achieved_per_s"])


def _bottleneck(stage: dict[str, Any]) -> dict[str, Any]:
    """The busiest process at the top stage; a Python service tops out at one core."""
    busy = {k: v["cpu_pct"] for k, v in stage["processes"].items() if k not in {*MACHINE, "bench client"}}
    name = max(busy, key=lambda k: busy[k])
    return {"process": name, "cpu_pct": busy[name], "saturated": busy[name] >= SATURATED_PCT}


def _fmt(dist: dict[str, float]) -> str:
    return f"{dist['p50']:.0f}/{dist['p99']:.0f}" if dist else "-"


def _table(result: dict[str, Any]) -> None:
    """Latencies in ms, p50/p99: trigger -> executed, publish -> observed here, less the tool."""
    table = Table(
        title=f"end to end on {result['broker']}, telemetry {'on' if result['telemetry'] else 'off'} (ms)",
        box=box.SIMPLE_HEAD,
    )
    for col in ("stage", "sent/s", "done/s", "e2e", "client", "overhead", "planner", "policy", "ok"):
        table.add_column(col, justify="right")
    for s in result["stages"]:
        lat = s["latency_ms"]
        table.add_row(
            f"{s['offered_per_s']:g}/s" if s["offered_per_s"] else f"closed {s['inflight']}",
            f"{s['published_per_s']:.0f}",
            f"{s['achieved_per_s']:.0f}",
            *(_fmt(lat[k]) for k in ("trigger_to_executed", "publish_to_observed", "overhead")),
            *(_fmt(lat[k]) for k in ("planner", "policy")),
            ("yes" if s["sustained"] else "no") if s["mode"] == "open" else "",
        )
    console.print(table)
    top = _top(result["stages"])
    cpu = Table(title=f"per process at the top stage ({top['achieved_per_s']:.0f}/s)", box=box.SIMPLE_HEAD)
    for col in ("process", "CPU %, idle", "CPU %", "CPU ms/action", "RSS MB"):
        cpu.add_column(col, justify="right")
    for name, v in sorted(top["processes"].items(), key=lambda kv: -kv[1]["cpu_pct"]):
        idle = result["idle"].get(name, {}).get("cpu_pct")
        per = top["cpu_ms_per_action"].get(name)
        cpu.add_row(
            name,
            "" if idle is None else f"{idle:.0f}",
            f"{v['cpu_pct']:.0f}",
            "" if per is None else f"{per:.1f}",
            f"{v['rss_mb']:.0f}" if name not in MACHINE else "",
        )
    cpu.add_row("stack total", "", "", f"{top['cpu_ms_per_action'].get('stack total', 0):.1f}", "")
    console.print(cpu)


def _plot(result: dict[str, Any], out: Path) -> None:
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    rate_ax, lat_ax, cpu_ax = fig.subplots(1, 3)
    open_stages = [s for s in result["stages"] if s["mode"] == "open"]
    offered = [s["offered_per_s"] for s in open_stages]
    rate_ax.plot(offered, offered, ":", color="grey", label="offered")
    rate_ax.plot(offered, [s["achieved_per_s"] for s in open_stages], "o-", label="achieved")
    for s in result["stages"]:
        if s["mode"] == "closed":
            rate_ax.axhline(s["achieved_per_s"], ls="--", color="C3", label=f"closed loop ({s['inflight']})")
    rate_ax.set(xlabel="offered triggers/s", ylabel="ActionExecuted/s", title="throughput")
    rate_ax.legend()
    for key, style in (("p50", "o-"), ("p99", "s--")):
        points = [(s["offered_per_s"], s["latency_ms"]["trigger_to_executed"].get(key)) for s in open_stages]
        lat_ax.plot(*zip(*[p for p in points if p[1] is not None], strict=True), style, label=key)
    lat_ax.set(xlabel="offered triggers/s", ylabel="trigger → executed, ms", yscale="log", title="latency")
    lat_ax.yaxis.set_major_formatter(ScalarFormatter())
    lat_ax.legend()
    top = _top(result["stages"])
    procs = sorted(
        (k for k in top["processes"] if k not in MACHINE), key=lambda k: -top["processes"][k]["cpu_pct"]
    )
    cpu_ax.bar(procs, [top["processes"][k]["cpu_pct"] for k in procs])
    cpu_ax.axhline(100, ls=":", color="grey")
    cpu_ax.set(ylabel="CPU, % of one core", title=f"CPU at {top['achieved_per_s']:.0f} executed/s")
    cpu_ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"Charter end to end on {result['broker']} ({result['machine']['cpus']} cores)")
    fig.savefig(out, dpi=110)
