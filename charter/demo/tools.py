"""The demo agents' tools: a shop's orders and refunds, a customer notifier, and IT access grants."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.demo import ledger
from charter.tools import ToolContext, ToolError, tool

ORDER_ID = r"^[A-Z]-\d{3,10}$"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderRef(_Params):
    order_id: str = Field(pattern=ORDER_ID)


class Order(BaseModel):
    order_id: str
    customer: str
    currency: str
    total: int


@tool(
    description="Look up an order in the shop.", cost_units=1, timeout_s=2.0, idempotent=True, dry_run="call"
)
def lookup_order(params: OrderRef, ctx: ToolContext) -> Order:
    ledger.called(ctx, "lookup_order", params.model_dump())
    if params.order_id.startswith("Z-"):
        # The demo shop has no Z- orders: a way to see a tool fail.
        raise ToolError(f"no order {params.order_id}")
    digest = hashlib.sha256(params.order_id.encode()).hexdigest()
    return Order(order_id=params.order_id, customer=f"cust-{digest[:6]}", currency="EUR", total=10_000)


class RefundRequest(_Params):
    order_id: str = Field(pattern=ORDER_ID)
    amount: int = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    reason: str = Field("", max_length=500)


class Refund(BaseModel):
    refund_id: str
    order_id: str
    amount: int
    currency: str


def _refund_id(ctx: ToolContext) -> str:
    return "rf-" + hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:10]


def _would_refund(params: RefundRequest, ctx: ToolContext) -> Refund:
    return Refund(refund_id=_refund_id(ctx), **params.model_dump(exclude={"reason"}))


@tool(
    description="Refund part or all of an order.",
    cost_units=5,
    timeout_s=5.0,
    idempotent=True,
    compensation="cancel_refund",
    dry_run=_would_refund,
)
def issue_refund(params: RefundRequest, ctx: ToolContext) -> Refund:
    ledger.called(ctx, "issue_refund", params.model_dump())
    effect = ledger.record(
        ctx, "refund", {"refund_id": _refund_id(ctx), **params.model_dump(exclude={"reason"})}
    )
    return Refund.model_validate(effect)


class RefundRef(_Params):
    refund_id: str = Field(pattern=r"^rf-[0-9a-f]{10}$")
    order_id: str = Field(pattern=ORDER_ID)


class RefundCancelled(BaseModel):
    refund_id: str
    cancelled: bool


@tool(description="Cancel a refund issued by mistake.", cost_units=1, timeout_s=5.0, idempotent=True)
def cancel_refund(params: RefundRef, ctx: ToolContext) -> RefundCancelled:
    ledger.called(ctx, "cancel_refund", params.model_dump())
    ledger.record(ctx, "refund_cancelled", params.model_dump())
    return RefundCancelled(refund_id=params.refund_id, cancelled=True)


class Notification(_Params):
    customer: str = Field(min_length=1)
    message: str = Field(min_length=1, max_length=2000)


class Delivered(BaseModel):
    delivered: bool


def _would_notify(params: Notification, ctx: ToolContext) -> Delivered:
    return Delivered(delivered=False)


@tool(
    description="Send a customer a message.",
    cost_units=1,
    timeout_s=2.0,
    idempotent=True,
    dry_run=_would_notify,
)
def notify_customer(params: Notification, ctx: ToolContext) -> Delivered:
    ledger.called(ctx, "notify_customer", params.model_dump())
    ledger.record(ctx, "notification", params.model_dump())
    return Delivered(delivered=True)


class AccessRequest(_Params):
    user: str = Field(pattern=r"^[a-z][a-z0-9._-]*$")
    system: str = Field(pattern=r"^[a-z][a-z0-9._-]*$")
    level: Literal["read", "write", "admin"]
    target_environment: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")


class Grant(BaseModel):
    grant_id: str
    user: str
    system: str
    level: str


def _grant_id(ctx: ToolContext) -> str:
    return "gr-" + hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:10]


def _would_grant(params: AccessRequest, ctx: ToolContext) -> Grant:
    return Grant(grant_id=_grant_id(ctx), **params.model_dump(exclude={"target_environment"}))


@tool(
    description="Grant a user access to a system.",
    cost_units=2,
    timeout_s=5.0,
    idempotent=True,
    dry_run=_would_grant,
)
def grant_access(params: AccessRequest, ctx: ToolContext) -> Grant:
    ledger.called(ctx, "grant_access", params.model_dump())
    effect = ledger.record(
        ctx, "grant", {"grant_id": _grant_id(ctx), **params.model_dump(exclude={"target_environment"})}
    )
    return Grant.model_validate(effect)
