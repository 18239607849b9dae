"""End to end: how many governed actions a second the stack sustains, at what latency and cost.

    .venv/bin/python -m bench.e2e [--broker tansu|kafka] [--rates 25,50,100,200,300,400] [--seconds 20]
        [--warmup 5] [--inflight 100] [--max-p99-ms 1000] [--no-telemetry] [--partitions N]
        [--fetch-wait-ms N]

Starts `charter up` in a fresh home with one agent (bench/agents/bench-lookup.yaml: one step,
lookup_order, which policy allows outright) and limits wide enough for the load, then drives
single-action runs: trigger -> ActionProposed -> ActionApproved (policy) -> ActionExecuted.

- Open loop: a stage per offered rate, paced by the wall clock, climbing until a stage is not
  sustained. Closed loop: `--inflight` runs kept outstanding, the most the stack can do.
- Per stage: achieved ActionExecuted/s, latency end to end and by hop, and CPU and RSS of each
  process (load.py says exactly what).

Product defaults (traces to file, metrics served) unless --no-telemetry; --fetch-wait-ms sets
the services' CHARTER_FETCH_MAX_WAIT_MS, the hop's latency floor on Tansu. Results go to
bench/results/e2e-<broker>[-no-telemetry][-fetch<N>ms].json and .png.

stack.py starts the stack, load.py drives and measures it, sample.py samples the processes,
report.py prints and plots, __main__.py runs it all.
"""

import sys

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 110)  # piped: wide enough for the tables
