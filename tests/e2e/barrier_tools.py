"""A tool for the end-to-end test that proves the executor calls tools of different runs at
once (tests/e2e/test_concurrency.py), loaded through CHARTER_TOOL_MODULES.

`gather` returns only once CHARTER_TEST_BARRIER_PARTIES calls of it are running together: it
waits on one threading.Barrier of that many parties, shared by every call in the executor's
process. An executor that calls tools one at a time, or on fewer threads than that, never gets
them all in; the barrier then breaks (after CHARTER_TEST_BARRIER_TIMEOUT_S, 60 s by default),
stays broken, and that call and every later one fail. Whether the calls meet decides the
outcome, not how long they took. Each call is noted in the demo ledger, so a test can count them.
"""

from __future__ import annotations

import os
import threading

from pydantic import BaseModel, ConfigDict, Field

from charter.demo import ledger
from charter.tools import ToolContext, ToolError, tool

PARTIES_ENV = "CHARTER_TEST_BARRIER_PARTIES"
TIMEOUT_ENV = "CHARTER_TEST_BARRIER_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0
# Far above any barrier timeout: a call the executor gave up on would stay waiting at the
# barrier, a party that no longer belongs to any action.
TOOL_TIMEOUT_S = 600.0


class _Shared:
    """The process's one barrier, made at the first call: the policy service loads this module
    too (to know the tool), and has no business reading the test's settings. It also counts
    the calls running, so a broken barrier can say how many ever ran together."""

    lock = threading.Lock()
    barrier: threading.Barrier | None = None
    running = 0
    most = 0

    @classmethod
    def enter(cls) -> threading.Barrier:
        with cls.lock:
            if cls.barrier is None:
                cls.barrier = _make()
            cls.running += 1
            cls.most = max(cls.most, cls.running)
            return cls.barrier

    @classmethod
    def leave(cls) -> None:
        with cls.lock:
            cls.running -= 1


def _make() -> threading.Barrier:
    try:
        parties = int(os.environ[PARTIES_ENV])
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except (KeyError, ValueError) as exc:
        raise ToolError(f"{PARTIES_ENV} (and {TIMEOUT_ENV}, if set) must be numbers: {exc}") from None
    if parties < 1 or not 0 < timeout < TOOL_TIMEOUT_S:
        raise ToolError(f"{PARTIES_ENV} must be >= 1 and {TIMEOUT_ENV} in (0, {TOOL_TIMEOUT_S:g})")
    return threading.Barrier(parties, timeout=timeout)


class Meeting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=64)


class Met(BaseModel):
    key: str
    # Which of the barrier's parties this call was (0 .. parties-1), in the order they arrived.
    arrived: int


# One attempt: a retry would be a second party for the same action.
@tool(
    description="Wait until every expected call of this tool is running, then return.",
    cost_units=1,
    timeout_s=TOOL_TIMEOUT_S,
    idempotent=True,
    max_attempts=1,
)
def gather(params: Meeting, ctx: ToolContext) -> Met:
    ledger.called(ctx, "gather", params.model_dump())
    barrier = _Shared.enter()
    try:
        arrived = barrier.wait()
    except threading.BrokenBarrierError:
        raise ToolError(
            f"the barrier of {barrier.parties} broke: at most {_Shared.most} calls were ever running at once"
        ) from None
    finally:
        _Shared.leave()
    return Met(key=params.key, arrived=arrived)
