"""`POST /v1/kill-switches`: an operator turns a kill switch on or off, as themselves.

The switch names the person from their credential, never from a request field, and is signed
with the approvals service's key: every service applies only signed switches
(charter/killswitch.py), so writing to `control` does not stop or restart anyone's agents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from charter.identity.principal import Principal
from charter.identity.roles import Permission
from charter.killswitch import switch_event
from services.approvals.api import ApiContext, ApiError, context, require
from services.approvals.api_models import ErrorBody

_ID = r"^[a-z0-9][a-z0-9_.-]{0,199}$"

router = APIRouter(prefix="/v1")
Ctx = Annotated[ApiContext, Depends(context)]


class SwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active: bool = Field(description="True: on (stop the scope); false: off.")
    reason: str = Field(min_length=1, max_length=2000, description="Why; every denial it causes says so.")
    agent: str | None = Field(None, pattern=_ID, description="Only this agent (default: every agent).")
    tool: str | None = Field(None, pattern=_ID, description="Only this tool (default: every tool).")


class SwitchAccepted(BaseModel):
    event_id: str
    switch_id: str
    active: bool
    set_by: str
    occurred_at: datetime


# 400: a body that is not JSON at all; 422: JSON that breaks the model.
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 422)}


@router.post("/kill-switches", status_code=202, response_model=SwitchAccepted, responses=_ERRORS)
async def set_switch(
    body: SwitchIn, ctx: Ctx, who: Annotated[Principal, Depends(require(Permission.SET_KILL_SWITCH))]
) -> SwitchAccepted:
    """Set a kill switch; every service applies it and acknowledges on `control`. A switch
    stops an agent or a tool for every tenant, so only the platform's own people, acting for
    its home tenant (CHARTER_TENANT) or for every tenant, set one."""
    home = ctx.settings.tenant
    if not who.acts_for(home):
        raise ApiError(
            403,
            "forbidden",
            f"{who.user} does not act for tenant {home}; a kill switch stops every tenant's runs",
        )
    event = ctx.signer.sign(
        switch_event(
            agent=body.agent,
            tool=body.tool,
            active=body.active,
            reason=body.reason,
            set_by=who.user,
            tenant=ctx.settings.tenant,
            now=ctx.clock.now(),
        )
    )
    await ctx.bus.publish(event)
    return SwitchAccepted(
        event_id=event.event_id,
        switch_id=event.switch_id,
        active=event.active,
        set_by=event.set_by,
        occurred_at=event.envelope.occurred_at,
    )
