"""Two audit replicas in one group, sharing one PostgreSQL store, under load: the signed heads on
`audit.checkpoints` only grow, each a strict extension of the one before (issue 19), every head
signed is published (issue 20), and the log verifies against them."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from charter import topics
from charter.bus import Outgoing
from charter.client import Client, Received
from charter.events import CheckpointSigned
from charter.stack import readiness
from charter.stack.processes import free_ports
from charter.store import make_engine
from services.audit import store as audit
from tests.e2e.conftest import Stack, broker_env, running

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ROUNDS = 200
PER_ROUND = 6  # records a round, spread over the dead-letter topics: many small batches, many heads


@contextmanager
def _replica(stack: Stack) -> Iterator[Path]:
    """A second audit process in the stack's group, ready (it has joined) when the block starts."""
    replica = stack.settings.model_copy(update={"instance": "replica-2"})
    log = stack.home / "logs" / "audit-replica-2.log"
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "services.audit"],
            env={**stack.env, "CHARTER_INSTANCE": "replica-2", "CHARTER_METRICS_PORT": str(free_ports(5))},
            stdout=out,
            stderr=subprocess.STDOUT,
        ) as second,
    ):
        try:
            deadline = time.monotonic() + 60
            while "audit" not in readiness.ready_pids(replica):
                assert second.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
            yield log
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)


def _load(stack: Stack, runs: str, dlqs: list[str]) -> int:
    """Bursts of records the audit keeps as undecodable evidence, each burst sent at once so both
    replicas append, and sign, at the same time. Half go to the runs topic, over all its
    partitions (the replicas split them; approvals dead-letters each), half to the dead-letter
    topics (one partition each, so all of them may fall to one replica)."""

    async def go() -> int:
        async with Client(stack.settings) as client:
            # One record alone first: the client makes its producer on first use, and bursts
            # racing to make it would leave extra ones unclosed.
            await client.send_record(Outgoing(dlqs[0], b"k", b"load start"))
            sent = 1
            for round_ in range(ROUNDS):
                burst = [
                    client.send_record(
                        Outgoing(
                            runs if n % 2 else dlqs[round_ % len(dlqs)],
                            f"k{round_}/{n}".encode(),
                            f"load {round_}/{n}".encode(),
                        )
                    )
                    for n in range(PER_ROUND)
                ]
                await asyncio.gather(*burst)
                sent += len(burst)
        return sent

    return asyncio.run(go())


def _heads_topic(stack: Stack) -> list[Received]:
    async def go() -> list[Received]:
        async with Client(stack.settings) as client:
            return [
                r async for r in client.replay("audit.checkpoints") if isinstance(r.event, CheckpointSigned)
            ]

    return asyncio.run(go())


def _owned(log: str) -> list[str]:
    """The partitions an audit process was last assigned, as its log names them."""
    assigned = re.findall(r"partitions assigned: \[(.*)\]", log)
    return assigned[-1].split(", ") if assigned else []


def _settled(engine: Engine, targets: list[str], sent: int) -> int:
    """The log's size once every record sent is appended and a head covering the whole log has
    been published (the audit sends it within CHARTER_AUDIT_CHECKPOINT_SECONDS)."""
    deadline = time.monotonic() + 90
    while True:
        with engine.connect() as conn:
            loaded = conn.execute(
                select(func.count()).select_from(audit.log_table).where(audit.log_table.c.topic.in_(targets))
            ).scalar_one()
            size = audit.size(conn)
            stored = [h.size for h in audit.checkpoints(conn)]
            published = audit.published_sizes(conn)
        if loaded >= sent and stored and stored[-1] == size and size in published:
            return size
        assert time.monotonic() < deadline, (loaded, sent, size, stored[-3:], sorted(published)[-3:])
        time.sleep(0.5)


def test_heads_signed_by_two_audit_replicas_only_grow(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> None:
    env = {
        **broker_env(request, broker),
        "CHARTER_DATABASE_URL": postgres_url,
        # A head every few records and a quick timer: both replicas sign often, and at once.
        "CHARTER_AUDIT_CHECKPOINT_EVERY": "3",
        "CHARTER_AUDIT_CHECKPOINT_SECONDS": "0.3",
    }
    with running(tmp_path / "home", **env) as stack, _replica(stack) as replica_log:
        heads_topic = topics.name(stack.settings, topics.Topic.AUDIT_CHECKPOINTS)
        runs = topics.name(stack.settings, topics.Topic.RUNS)
        dlqs = [
            n
            for n in topics.all_names(stack.settings)
            if n.endswith(topics.DLQ_SUFFIX) and n != topics.dlq_name(heads_topic)
        ]
        targets = [runs, *dlqs]
        sent = _load(stack, runs, dlqs)
        engine = make_engine(stack.settings.database_url_for("audit"))
        try:
            size = _settled(engine, targets, sent)
            records = _heads_topic(stack)
            with engine.connect() as conn:
                stored = [h.size for h in audit.checkpoints(conn)]
        finally:
            engine.dispose()
        verified = stack.cli("audit", "verify", check=False, timeout=120)
        owned = [_owned(log.read_text()) for log in (stack.home / "logs" / "audit.log", replica_log)]

    by_partition: dict[int, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert isinstance(r.event, CheckpointSigned)
        by_partition.setdefault(r.partition, []).append(r.event.size)
    # One partition holds every head, so the topic itself orders them...
    assert len(by_partition) == 1, {p: s[:20] for p, s in by_partition.items()}
    sizes = next(iter(by_partition.values()))
    # ...and in that order each head is larger than the one before: the log never shrinks.
    backwards = [(a, b) for a, b in pairwise(sizes) if b <= a]
    assert not backwards, (backwards[:5], sizes[:40])
    # Every head signed was published (those signed after the topic was read aside), the
    # newest covering everything appended under load.
    assert sizes == [s for s in stored if s <= sizes[-1]], (sizes[-5:], stored[-5:])
    assert sizes[-1] >= size
    # Each head is a strict extension of the last: all of them are roots of the one log.
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Both replicas took part: each owned some of the partitions under load.
    for partitions in owned:
        assert any(p.startswith(f"'{t}[") for p in partitions for t in targets), owned
