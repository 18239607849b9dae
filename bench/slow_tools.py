"""The slow benchmark's tool (bench/slow.py): an ordinary synchronous Python tool that takes its
time, as a user's call to a slow system does.

`slow_lookup` sleeps CHARTER_BENCH_TOOL_DELAY_S (default 1.0) seconds with `time.sleep`, read at
each call in the executor's process, then answers. It only reads, so it is idempotent and
cheap; its timeout (CHARTER_BENCH_TOOL_TIMEOUT_S, default 30) is read when the module is
imported, and is well above the delay so that a call waiting for a thread is not cut short.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, ConfigDict, Field

from charter.tools import ToolContext, tool

DELAY_ENV = "CHARTER_BENCH_TOOL_DELAY_S"
TIMEOUT_ENV = "CHARTER_BENCH_TOOL_TIMEOUT_S"


class OrderRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(pattern=r"^[A-Z]-\d{3,10}$")


class Looked(BaseModel):
    order_id: str
    waited_s: float


def delay_s() -> float:
    return float(os.environ.get(DELAY_ENV, "1.0"))


@tool(
    description="Look an order up in a slow system.",
    cost_units=1,
    timeout_s=float(os.environ.get(TIMEOUT_ENV, "30")),
    idempotent=True,
    dry_run="call",
)
def slow_lookup(params: OrderRef, ctx: ToolContext) -> Looked:
    waited = delay_s()
    time.sleep(waited)
    return Looked(order_id=params.order_id, waited_s=waited)
