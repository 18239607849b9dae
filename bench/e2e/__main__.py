"""Run the end-to-end benchmark: `.venv/bin/python -m bench.e2e --help`."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import bench.e2e
from bench.e2e import console
from bench.e2e.load import Measured, _measure
from bench.e2e.report import _bottleneck, _machine, _plot, _table, _top
from bench.e2e.stack import REPO, Stack, _env
from charter.config import Settings

RESULTS = REPO / "bench" / "results"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(bench.e2e.__doc__ or "").splitlines()[0])
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument(
        "--rates", type=lambda s: [float(r) for r in s.split(",")], default=[25, 50, 100, 200, 300, 400]
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per stage")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="unmeasured seconds at the start of a stage"
    )
    parser.add_argument(
        "--inflight", type=int, default=100, help="closed-loop runs outstanding; 0: no such stage"
    )
    parser.add_argument("--max-p99-ms", type=float, default=1000.0, help="a stage's latency bound")
    parser.add_argument("--no-telemetry", action="store_true", help="no trace file, no metrics endpoints")
    parser.add_argument(
        "--partitions", type=int, default=None, help="partitions a topic (default: the product's)"
    )
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=None,
        help="the services' CHARTER_FETCH_MAX_WAIT_MS (default: the product's); results get a suffix",
    )
    return parser.parse_args()


def _run(args: argparse.Namespace) -> tuple[Measured, Settings]:
    home = Path(tempfile.mkdtemp(prefix="charter-bench-e2e-"))
    env = _env(home, telemetry=not args.no_telemetry)
    if args.partitions:
        env["CHARTER_PARTITIONS"] = str(args.partitions)
    if args.fetch_wait_ms:
        env["CHARTER_FETCH_MAX_WAIT_MS"] = str(args.fetch_wait_ms)
    stack = Stack(home, env, "--broker", args.broker)
    try:
        console.print(f"stack ready in {stack.wait_ready(180 if args.broker == 'kafka' else 60):.1f}s")
        settings = Settings(
            home=home,
            broker=args.broker,
            partitions=args.partitions or Settings().partitions,
            fetch_max_wait_ms=args.fetch_wait_ms or Settings().fetch_max_wait_ms,
        )
        return asyncio.run(_measure(settings, stack, args)), settings
    finally:
        stack.close()


def main() -> None:
    args = _args()
    machine = _machine()
    (stages, idle), settings = _run(args)
    result = {
        "machine": machine,
        "broker": args.broker,
        "telemetry": not args.no_telemetry,
        "settings": {
            "rates": args.rates,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "inflight": args.inflight,
            "max_p99_ms": args.max_p99_ms,
            "agent": "bench-lookup",
            "tool": "lookup_order",
            "partitions": settings.partitions,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        },
        "idle": idle,
        "stages": stages,
        "max_sustained_per_s": max(
            (s["achieved_per_s"] for s in stages if s["mode"] == "open" and s["sustained"]), default=None
        ),
        "closed_loop_per_s": next((s["achieved_per_s"] for s in stages if s["mode"] == "closed"), None),
        "bottleneck": _bottleneck(_top(stages)),
    }
    name = f"e2e-{args.broker}{'' if result['telemetry'] else '-no-telemetry'}"
    if args.fetch_wait_ms:
        name += f"-fetch{args.fetch_wait_ms}ms"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, RESULTS / f"{name}.png")
    _table(result)
    if any(s["client_bound"] for s in stages):
        console.print(
            "[yellow]the bench client itself was the limit in some stage (client_bound in the JSON)"
        )
    b = result["bottleneck"]
    console.print(
        f"highest rate sustained: {result['max_sustained_per_s']}/s; closed loop: {result['closed_loop_per_s']}/s; "
        f"busiest at the top: {b['process']} at {b['cpu_pct']:.0f}% of a core"
        f"{' (saturated)' if b['saturated'] else ''}. Results: {RESULTS / name}.json, .png"
    )


if __name__ == "__main__":
    main()
