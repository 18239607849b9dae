"""HTTP tools for the executor's end-to-end tests, served by tests/e2e/tool_server.py.

The services import this module (CHARTER_TOOL_MODULES) and read the server's address from
CHARTER_TEST_TOOLS_URL; it is not part of the product.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from charter.tools import http_tool

BASE = os.environ.get("CHARTER_TEST_TOOLS_URL", "http://127.0.0.1:9")


class Amount(BaseModel):
    order: str = Field(pattern=r"^[a-z0-9-]+$")
    amount: int = Field(ge=0)


class Receipt(BaseModel):
    receipt: str
    amount: int


class ReceiptRef(BaseModel):
    receipt: str


class Undone(BaseModel):
    undone: str


charge = http_tool(
    "test_charge",
    method="POST",
    url=f"{BASE}/charge",
    params=Amount,
    result=Receipt,
    idempotent=True,
    compensation="test_uncharge",
    timeout_s=2.0,
)
uncharge = http_tool(
    "test_uncharge", method="POST", url=f"{BASE}/uncharge", params=ReceiptRef, result=Undone, idempotent=True
)
# Not idempotent: the server acts on every call it gets, so a second call would be a second effect.
ship = http_tool("test_ship", method="POST", url=f"{BASE}/ship", params=Amount, result=Receipt, timeout_s=2.0)
# Always fails: the step after a charge that makes the run compensate.
reject = http_tool("test_reject", method="POST", url=f"{BASE}/reject", params=Amount)
# Sends a secret; the server echoes the Authorization header back in its answer.
echo = http_tool(
    "test_echo",
    method="POST",
    url=f"{BASE}/echo",
    params=Amount,
    headers={"Authorization": "Bearer ${CANARY_TOKEN}"},
    idempotent=True,
)
