"""The executor's overhead per action, excluding the tool's own time.

    .venv/bin/python bench/executor.py [--actions 2000] [--repeats 3] [--postgres URL]

Drives the executor's own code path in process, the way its pipeline does: decode the signed
ActionApproved from Avro, verify the policy's signature, look up the idempotency key, check
kill switches and the tool's circuit, record `started` (a committed transaction), call the
tool, record `completed` with the outcome (another), encode the outcome. The tool does
nothing and returns at once, and its measured duration is subtracted, so what remains is
Charter's overhead. The Kafka hops are not included (bench/latency.py measures those).
Reports p50/p99 per store as medians over the repeats; results go to bench/results/executor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel

from charter import serde, signing
from charter.clock import SystemClock, derive_id
from charter.config import Settings
from charter.events import Action, ActionApproved, ActionExecuted, Decision
from charter.killswitch import ControlFollower
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import settle
from charter.secrets import Secrets
from charter.store import make_engine
from charter.tools import Registry, ToolContext, tool
from services.executor import store as executions
from services.executor.service import Executor

REPO = Path(__file__).resolve().parent.parent
NO_DELIVERY = Delivery("", 0, 0, None, b"", (), 0)


class Params(BaseModel):
    order_id: str
    amount: int


class Done(BaseModel):
    ok: bool


@tool(idempotent=True)
async def noop(params: Params, ctx: ToolContext) -> Done:
    return Done(ok=True)


class _NoSwitches:
    switches: tuple[Any, ...] = ()


def _approved(signer: signing.Signer, i: int, run: str) -> bytes:
    run_id = derive_id(run, str(i))
    action = Action(
        action_id=derive_id(run_id, "action:0"),
        step_index=0,
        step_id="pay",
        tool="noop",
        resource="order/A-1",
        parameters={"order_id": "A-1", "amount": i},
        environment="production",
    )
    decision = Decision(outcome="allow", policy_ids=["p"], policy_hash="h", reasons=["ok"], approval_roles=[])
    event = ActionApproved.create(
        event_id=derive_id(run_id, "approved"),
        now=SystemClock().now(),
        tenant="bench",
        agent="bench",
        run_id=run_id,
        correlation_id=run_id,
        action=action,
        decision=decision,
        approved_by="policy",
    )
    return serde.encode(signer.sign(event))


async def _once(executor: Executor, records: list[bytes]) -> list[float]:
    overheads = []
    for record in records:
        started = time.perf_counter()
        event = serde.decode(record)
        [outcome] = await settle(executor.handle(event, NO_DELIVERY))
        serde.encode(outcome)
        total_ms = (time.perf_counter() - started) * 1000
        assert isinstance(outcome, ActionExecuted), outcome
        overheads.append(total_ms - outcome.duration_ms)
    return overheads


def _measure(database_url: str | None, actions: int, repeats: int) -> dict[str, float]:
    p50s, p99s = [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as home:
            settings = Settings(home=Path(home), database_url=database_url)
            signing.ensure_keys(settings.keys)
            engine = make_engine(settings.database_url_for("executor"))
            executions.metadata.drop_all(engine)
            executions.create(engine)
            registry = Registry([noop.__charter_tool__])  # type: ignore[attr-defined]
            executor = Executor(
                settings, engine, registry, SystemClock(), cast(ControlFollower, _NoSwitches()), Secrets({})
            )
            signer = signing.Signer.load(settings.keys, "policy")
            records = [_approved(signer, i, f"bench-{repeat}") for i in range(actions)]
            overheads = sorted(asyncio.run(_once(executor, records)))
            engine.dispose()
        p50s.append(statistics.median(overheads))
        p99s.append(overheads[int(len(overheads) * 0.99) - 1])
    return {"p50_ms": round(statistics.median(p50s), 3), "p99_ms": round(statistics.median(p99s), 3)}


def _bench_database(admin_url: str) -> str:
    """A database of the bench's own on the PostgreSQL server, made if missing."""
    import psycopg  # noqa: PLC0415 (only this figure needs it)

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = 'charter_bench'").fetchone() is None:
            admin.execute("CREATE DATABASE charter_bench")
    return admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + "/charter_bench"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actions", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--postgres",
        help="an admin URL of the PostgreSQL server",
        default="postgresql://charter:charter@127.0.0.1:5432/postgres",
    )
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "actions": args.actions,
        "repeats": args.repeats,
        "sqlite": _measure(None, args.actions, args.repeats),
    }
    try:
        results["postgresql"] = _measure(_bench_database(args.postgres), args.actions, args.repeats)
    except Exception as exc:  # the figure is reported as missing, with why
        results["postgresql"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results, indent=2))
    out = REPO / "bench" / "results" / "executor.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
