"""Tools for the isolation tests: one only the `payments` pool runs, which says which executor
ran it; sandboxed ones that stay within their quotas, allocate past them, spin past them, or
outlive their timeout (tests/e2e/test_isolation.py, tests/unit/test_sandbox.py); and one that
holds its slot until the test opens its gate (tests/e2e/test_fair_share.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from charter.tools import Sandbox, ToolContext, tool


class Order(BaseModel):
    order: str


class Ran(BaseModel):
    pool: str
    pid: int


@tool(description="Pays an order; only the payments pool's executors run it.", pool="payments")
def test_pay(params: Order, ctx: ToolContext) -> Ran:
    return Ran(pool=os.environ.get("CHARTER_EXECUTOR_POOL", ""), pid=os.getpid())


@tool(description="Answers from a sandbox of its own.", sandbox=Sandbox(memory_mb=64, cpu_s=5))
def test_sandboxed(params: Order, ctx: ToolContext) -> Ran:
    return Ran(pool=params.order, pid=os.getpid())


@tool(
    description="Reads its secret in a sandbox.",
    sandbox=Sandbox(memory_mb=64, cpu_s=5),
    secrets=["TEST_SANDBOX_SECRET"],
)
def test_secretive(params: Order, ctx: ToolContext) -> Ran:
    return Ran(pool=ctx.secret("TEST_SANDBOX_SECRET"), pid=os.getpid())


@tool(
    description="Allocates far past its memory quota.",
    sandbox=Sandbox(memory_mb=64, cpu_s=10),
    timeout_s=30,
)
def test_hog(params: Order, ctx: ToolContext) -> Ran:
    hoard = bytearray(1024 * 2**20)  # 1 GiB, 16 times its quota
    return Ran(pool=str(len(hoard)), pid=os.getpid())


@tool(description="Spins past its CPU-time quota.", sandbox=Sandbox(memory_mb=64, cpu_s=1), timeout_s=30)
def test_spin(params: Order, ctx: ToolContext) -> Ran:
    while True:
        pass


@tool(description="Outlives its timeout.", sandbox=Sandbox(), timeout_s=3)
def test_linger(params: Order, ctx: ToolContext) -> Ran:
    Path(params.order).write_text(str(os.getpid()))
    time.sleep(60)
    return Ran(pool="", pid=os.getpid())


class Gated(BaseModel):
    order: str
    gates: str


@tool(description="Says it started, then waits until its gate (a file) exists.", timeout_s=300)
def test_gate(params: Gated, ctx: ToolContext) -> Ran:
    gate = Path(params.gates) / params.order
    Path(f"{gate}.started").write_text(str(os.getpid()))
    while not gate.exists():  # the gate is another process's file: nothing to await but its coming
        time.sleep(0.05)
    return Ran(pool="", pid=os.getpid())


@tool(description="Prints as it works, in a sandbox.", sandbox=Sandbox(memory_mb=64, cpu_s=5))
def test_chatty(params: Order, ctx: ToolContext) -> Ran:
    print("working on", params.order)
    return Ran(pool=",".join(sorted(os.environ)), pid=os.getpid())
