"""The audit log's speed: appends with leaves and signed heads, verification, and proofs at scale.

    .venv/bin/python -m bench.audit [--events 50000] [--repeats 3] [--scale 1000000] [--postgres URL]

  - append: the audit service's own batch path (`Auditor.handle_batch`, no broker): decode
    each record, attribute it, seal personal fields, compute its canonical bytes and leaf, insert
    the batch in one transaction, and sign a tree head every 1,000 records. Records are real
    Avro events (a run's worth, each with fresh ids), 500 to a batch, as the consumer hands them.
  - store append: the same without decoding and attribution (what the database and the tree cost).
  - verify: `charter audit verify`'s check over the whole log: every leaf recomputed from the
    record's bytes, the tree rebuilt, every signed head's root and signature checked; with
    `--fast` semantics (cryptographic checks) and deep (the query columns against the signed
    records too).
  - proofs at the full size: inclusion and consistency proof size and time, cold (a fresh tree,
    leaves read from the database) and warm (subtree roots cached, as in a long-lived process).
Medians over the repeats; results go to bench/results/audit.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from charter import serde, signing
from charter.bus import ORIGIN_HEADER
from charter.config import Settings
from charter.events import Event
from charter.runtime.delivery import Delivery
from charter.store import make_engine
from services.audit import store
from services.audit.merkle import Tree, check_consistency, check_inclusion
from services.audit.record import Attribution
from services.audit.service import Auditor
from services.audit.verify import verify
from tests.factories import one_of_each

REPO = Path(__file__).resolve().parent.parent
BATCH = 500
HEADERS = (
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    (ORIGIN_HEADER, b"charter.executor@bench"),
)


def _fresh(events: list[Event], n: int) -> list[bytes]:
    """n encoded events cycling through `events`, each with an id of its own."""
    out = []
    for i in range(n):
        e = events[i % len(events)]
        env = e.envelope.model_copy(update={"event_id": str(uuid.uuid4())})
        out.append(serde.encode(e.model_copy(update={"envelope": env})))
    return out


def _settings(home: Path) -> Settings:
    return Settings(
        home=home, keys_dir=home / "keys", audit_checkpoint_every=1000, audit_checkpoint_seconds=3600
    )


def _auditor(engine: Engine, home: Path) -> Auditor:
    signing.ensure_keys(home / "keys", ("audit",))
    return Auditor(engine, _settings(home), signing.Signer.load(home / "keys", "audit"))


def bench_append(engine: Engine, home: Path, n: int) -> float:
    values = _fresh(one_of_each(), n)
    auditor = _auditor(engine, home)
    batches = [
        [
            Delivery("charter.bench", 0, i + j, b"k", v, HEADERS, 0)
            for j, v in enumerate(values[i : i + BATCH])
        ]
        for i in range(0, n, BATCH)
    ]
    start = time.perf_counter()
    for batch in batches:
        asyncio.run(auditor.handle_batch(batch))
    return n / (time.perf_counter() - start)


def bench_store_append(engine: Engine, home: Path, n: int, offset: int = 0) -> float:
    """Appends through the store and signed heads, with attribution already made."""
    template = Attribution(
        event_id="",
        event_type="ActionExecuted",
        run_id="5f0c6a9e-2f7e-5b7b-9d43-1f1f6a3c2b11",
        agent="support-refunds",
        actor=None,
        tenant="acme",
        occurred_at=None,
        recorded_at_us=1_700_000_000_000_000,
        topic="charter.actions.results",
        partition=0,
        offset=0,
        service="charter.executor",
        host="bench",
        source="event:1f1f6a3c",
        outcome="succeeded",
        policy_hash="ab" * 32,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        subject=None,
    )
    value = _fresh(one_of_each(), 1)[0]
    auditor = _auditor(engine, home)
    items = [
        store.Pending(replace(template, event_id=f"bench-{offset + i}", offset=offset + i), value)
        for i in range(n)
    ]
    start = time.perf_counter()
    for i in range(0, n, BATCH):
        asyncio.run(auditor.append_attributed(items[i : i + BATCH]))
    return n / (time.perf_counter() - start)


def bench_verify(engine: Engine, key: signing.Verifier, *, deep: bool) -> tuple[float, int]:
    start = time.perf_counter()
    with engine.connect() as conn:
        report = verify(conn, key, deep=deep)
    assert report.ok, report.problems[:3]
    return report.rows / (time.perf_counter() - start), report.rows


def bench_proofs(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        heads = store.checkpoints(conn)
        old, new = heads[len(heads) // 2], heads[-1]
        leaf = store.leaves(conn, 12_344, 1)[0]
        tree = Tree.over(lambda: conn)
        start = time.perf_counter()
        inclusion = tree.inclusion(12_345, new.size)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        tree.inclusion(new.size - 7, new.size)
        warm = time.perf_counter() - start
        start = time.perf_counter()
        consistency = tree.consistency(old.size, new.size)
        consistency_s = time.perf_counter() - start
    start = time.perf_counter()
    check_inclusion(inclusion, leaf, new.root, 12_345, new.size)
    check_s = time.perf_counter() - start
    check_consistency(consistency, (old.size, old.root), (new.size, new.root))
    return {
        "size": new.size,
        "inclusion_hashes": len(inclusion["path"]),
        "inclusion_bytes_json": len(json.dumps(inclusion)),
        "inclusion_cold_ms": cold * 1000,
        "inclusion_warm_ms": warm * 1000,
        "inclusion_check_ms": check_s * 1000,
        "consistency_hashes": len(consistency["path"]),
        "consistency_bytes_json": len(json.dumps(consistency)),
        "consistency_warm_ms": consistency_s * 1000,
    }


def _median(values: list[float]) -> float:
    return statistics.median(values)


def run_store(url_for: Any, label: str, events: int, repeats: int, big: int) -> dict[str, Any]:
    appends, store_appends, fast, deep = [], [], [], []
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            engine = make_engine(url_for(home, f"a{r}"))
            store.create(engine)
            appends.append(bench_append(engine, home, events))
            engine.dispose()
            engine = make_engine(url_for(home, f"s{r}"))
            store.create(engine)
            store_appends.append(bench_store_append(engine, home, events))
            key = signing.Verifier.load(home / "keys", "audit")
            fast.append(bench_verify(engine, key, deep=False)[0])
            deep.append(bench_verify(engine, key, deep=True)[0])
            engine.dispose()
        print(
            f"{label} repeat {r + 1}: append {appends[-1]:,.0f}/s, store append {store_appends[-1]:,.0f}/s, "
            f"verify {fast[-1]:,.0f}/s (deep {deep[-1]:,.0f}/s)",
            flush=True,
        )
    out: dict[str, Any] = {
        "events": events,
        "append_per_s": _median(appends),
        "store_append_per_s": _median(store_appends),
        "verify_per_s": _median(fast),
        "verify_deep_per_s": _median(deep),
    }
    if big:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            engine = make_engine(url_for(home, "big"))
            store.create(engine)
            started = time.perf_counter()
            rate = bench_store_append(engine, home, big)
            key = signing.Verifier.load(home / "keys", "audit")
            big_fast, rows = bench_verify(engine, key, deep=False)
            out["at_scale"] = {
                "rows": rows,
                "store_append_per_s": rate,
                "verify_per_s": big_fast,
                "proofs": bench_proofs(engine),
                "build_s": time.perf_counter() - started,
            }
            engine.dispose()
        print(f"{label} at {big:,}: {json.dumps(out['at_scale'], indent=1)}", flush=True)
    return out


def _postgres(admin_url: str) -> Any:
    def url_for(_home: Path, name: str) -> str:
        engine = make_engine(admin_url)
        database = f"bench_audit_{name}_{uuid.uuid4().hex[:6]}"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"CREATE DATABASE {database}"))
        engine.dispose()
        return admin_url.rsplit("/", 1)[0] + f"/{database}"

    return url_for


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000, help="Records per append/verify repeat.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scale", type=int, default=1_000_000, help="Log size for the proof figures (0: skip)."
    )
    parser.add_argument("--postgres", help="Also run on PostgreSQL (an admin URL; databases are created).")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version()}
    results["sqlite"] = run_store(
        lambda home, name: f"sqlite:///{home / (name + '.db')}",
        "sqlite",
        args.events,
        args.repeats,
        args.scale,
    )
    if args.postgres:
        results["postgresql"] = run_store(
            _postgres(args.postgres), "postgresql", args.events, args.repeats, 0
        )
    out = REPO / "bench" / "results" / "audit.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
