"""The bodies the HTTP API accepts and returns: its OpenAPI document is generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charter.identity.users import NAME

TRIGGER_NAME = r"^[a-z0-9][a-z0-9_.-]{0,199}$"
HASH = r"^[0-9a-f]{64}$"
TENANT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str = Field(description="One line saying what went wrong.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Me(BaseModel):
    user: str
    email: str | None
    roles: list[str]
    via: str = Field(description="token or oidc")
    token_id: str | None
    tenants: list[str] = Field(description="The tenants they act for; '*' is every tenant.")


class Health(BaseModel):
    status: str


class EventIn(_In):
    name: str = Field(pattern=TRIGGER_NAME, description="The business event, e.g. support.refund_requested.")
    data: dict[str, Any] = Field(default_factory=dict, description="Its data, a JSON object.")
    correlation_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Ties the runs to a business process; defaults to the event's id.",
    )
    source: str = Field(
        "api", pattern=r"^[a-z0-9][a-z0-9_.:-]{0,99}$", description="Where it came from: api, cli."
    )
    tenant: str | None = Field(
        None,
        pattern=TENANT,
        description="The tenant it is for, one the caller acts for; defaults to the caller's only "
        "tenant, else the service's (CHARTER_TENANT).",
    )


class RunStart(BaseModel):
    agent: str
    run_id: str = Field(description="The run the planner will start for this agent.")


class EventAccepted(BaseModel):
    event_id: str
    name: str
    submitted_by: str
    starts: list[RunStart] | None = Field(
        description="The agents the event starts, each with its run; empty: it starts none; "
        "null: the API could not read the agents to tell."
    )
    awaited_by: list[str] = Field(description="Agents with a step that waits for this event.")
    unevaluable: list[str] = Field(
        description="Agents' filters the data cannot be evaluated against: the planner dead-letters "
        "the event to triggers.dlq with these reasons, and starts no agent."
    )
    note: str = Field(description="In plain words: what the event will set going, or that nothing will.")


class RunSummary(BaseModel):
    run_id: str
    tenant: str | None
    agent: str
    trigger: str
    started: datetime | None
    status: str
    last: str
    triggered_by: str | None


class RunList(BaseModel):
    runs: list[RunSummary]


class TimelineItem(BaseModel):
    seq: int
    occurred_at: datetime | None
    event_type: str
    topic: str
    text: str
    event: dict[str, Any] | None


class RunDetail(BaseModel):
    run: RunSummary
    trigger: dict[str, Any] | None
    timeline: list[TimelineItem]


class ApprovalOut(BaseModel):
    approval_id: str
    run_id: str
    tenant: str
    agent: str
    tool: str
    resource: str
    parameters: dict[str, Any]
    roles: list[str]
    approvals_required: int
    reasons: str
    action_hash: str
    status: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    note: str | None


class ApprovalList(BaseModel):
    approvals: list[ApprovalOut]


class DecisionOut(BaseModel):
    decision_event_id: str
    approver: str
    attempted: str
    roles: list[str]
    outcome: str = Field(description="counted or refused")
    code: str | None
    reason: str | None
    at: datetime


class ApprovalDetail(BaseModel):
    approval: ApprovalOut
    policy_ids: list[str]
    policy_hash: str
    agent_owner: str | None
    triggered_by: str | None
    amended_by: str | None
    decisions: list[DecisionOut]
    trigger: dict[str, Any] | None
    run: RunSummary | None
    timeline: list[TimelineItem]


class ApproveIn(_In):
    action_hash: str = Field(
        pattern=HASH, description="The binding shown with the approval: what you approve."
    )
    comment: str | None = Field(None, max_length=2000)
    parameters: dict[str, Any] | None = Field(
        None, description="Edited parameters: the action goes back to policy as a new proposal."
    )


class RejectIn(_In):
    action_hash: str = Field(pattern=HASH, description="The binding shown with the approval.")
    reason: str | None = Field(None, max_length=2000)


class InstructIn(_In):
    instruction: str = Field(
        "", max_length=4000, description="For resume: what the run's planner (its model) reads next."
    )


class RunInstructionAccepted(BaseModel):
    event_id: str
    run_id: str
    command: str
    instructed_by: str


class DecisionResult(BaseModel):
    approval: ApprovalOut
    decision: DecisionOut | None = Field(
        description="None while the approvals service has not applied it yet."
    )


class Problem(BaseModel):
    kind: str = Field(description="deleted, altered, moved, truncated, forked, mismatch, forged or column.")
    position: int = Field(description="The record (seq) or head size it concerns.")
    message: str


class Verification(BaseModel):
    ok: bool
    rows: int
    root: str = Field(description="The Merkle tree hash of the whole log, hex.")
    heads: int = Field(description="Signed heads checked (those stored with the log).")
    signed: int = Field(description="Records covered by the newest head that matches.")
    problems: list[Problem]


class TokenIn(_In):
    user: str = Field(pattern=NAME)
    roles: list[str] | None = Field(
        None, description="Scope: some of the user's roles; all of them if omitted."
    )
    tenants: list[str] | None = Field(
        None, description="Scope: some of the user's tenants; all of them if omitted."
    )
    expires_in_s: int | None = Field(None, ge=60, le=400 * 86_400)
    description: str | None = Field(None, max_length=500)


class TokenOut(BaseModel):
    token_id: str
    user: str
    roles: list[str]
    tenants: list[str] = Field(description="Its scope of its user's tenants; empty: all of them.")
    description: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    state: str


class TokenIssued(TokenOut):
    token: str = Field(description="Shown once; only its hash is kept.")


class TokenList(BaseModel):
    tokens: list[TokenOut]
