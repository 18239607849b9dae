"""A tool whose result holds personal data nested in a list, as a CRM lookup returns it, with no
field naming the customer (tests/e2e/test_personal_purge.py)."""

from __future__ import annotations

from pydantic import BaseModel

from charter.tools import ToolContext, tool

EMAIL = "grace.hopper@example.com"


class Order(BaseModel):
    order: str


class Contacts(BaseModel):
    contacts: list[dict[str, str]]


@tool(description="Looks up an order's contacts.", idempotent=True)
def test_lookup(params: Order, ctx: ToolContext) -> Contacts:
    return Contacts(contacts=[{"email": EMAIL, "kind": "billing"}])
