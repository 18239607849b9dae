"""Charter's events: immutable facts, named in the past tense, one Avro schema each.

Each model here matches `schemas/<Name>.avsc` field for field (tests/unit/test_schemas.py
proves it). The envelope carries identity, time and lineage; the payload is the event's own.
JSON-valued fields (`parameters`, `data`, `result`, `outputs`) are strings on the wire so
the Avro contract does not change with each tool's parameters; in Python they are dicts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, SerializationInfo

from charter.clock import derive_id


def canonical_json(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, no spaces, so equal data hash equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _load_json_object(value: Any) -> Any:
    if isinstance(value, str):
        loaded = json.loads(value)
        if not isinstance(loaded, dict):
            raise ValueError("expected a JSON object")
        return loaded
    return value


def _dump_json_object(value: dict[str, Any], info: SerializationInfo) -> Any:
    # Avro carries these as JSON text; the API (context {"objects": True}) shows them as objects.
    if isinstance(info.context, dict) and info.context.get("objects"):
        return value
    return canonical_json(value)


JsonObject = Annotated[
    dict[str, Any],
    BeforeValidator(_load_json_object),
    PlainSerializer(_dump_json_object),
]


class _Frozen(BaseModel):
    # Bytes (a dead letter's original record) show as base64 in JSON: they are rarely UTF-8.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64")


class Envelope(_Frozen):
    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    tenant: str
    agent: str | None = None
    run_id: str | None = None
    correlation_id: str
    causation_id: str | None = None


class Action(_Frozen):
    action_id: str
    step_index: int
    step_id: str
    tool: str
    resource: str
    parameters: JsonObject
    environment: str
    compensates: str | None = None


class Decision(_Frozen):
    outcome: str
    policy_ids: list[str]
    policy_hash: str
    reasons: list[str]
    approval_roles: list[str]
    limit: str | None = None
    previous_policy_hash: str | None = None
    approvals_required: int = 1
    approval_timeout_s: float | None = None


class Approver(_Frozen):
    user: str
    roles: list[str]


E = TypeVar("E", bound="Event")


class Event(_Frozen):
    """Base of every event type. Subclasses name their Avro schema by class name."""

    SCHEMA_VERSION: ClassVar[int] = 1

    envelope: Envelope

    @property
    def event_id(self) -> str:
        return self.envelope.event_id

    @property
    def run_id(self) -> str | None:
        return self.envelope.run_id

    @classmethod
    def caused_by(
        cls: type[E],
        cause: Event,
        /,
        *,
        now: datetime,
        label: str = "",
        event_id: str = "",
        lineage: Event | None = None,
        **payload: Any,
    ) -> E:
        """The event `cause` led to: same tenant, agent, run and correlation as the cause, or as
        `lineage` when given (a human's decision continues the run of the request it decides).
        Its id is `event_id` if given, else derived from the cause's id and `label`."""
        env = (lineage or cause).envelope
        return cls.create(
            event_id=event_id or derive_id(cause.event_id, label or cls.__name__),
            now=now,
            tenant=env.tenant,
            agent=payload.pop("agent", env.agent),
            run_id=payload.pop("run_id", env.run_id),
            correlation_id=env.correlation_id,
            causation_id=cause.event_id,
            **payload,
        )

    @classmethod
    def create(
        cls: type[E],
        *,
        event_id: str,
        now: datetime,
        tenant: str,
        correlation_id: str,
        agent: str | None = None,
        run_id: str | None = None,
        causation_id: str | None = None,
        **payload: Any,
    ) -> E:
        envelope = Envelope(
            event_id=event_id,
            event_type=cls.__name__,
            schema_version=cls.SCHEMA_VERSION,
            occurred_at=now.astimezone(UTC),
            tenant=tenant,
            agent=agent,
            run_id=run_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        return cls(envelope=envelope, **payload)


class TriggerReceived(Event):
    name: str
    data: JsonObject
    source: str
    submitted_by: str | None = None
    signature: str | None = None


class RunStarted(Event):
    agent_owner: str
    trigger_event_id: str
    trigger_name: str
    environment: str
    steps: int
    triggered_by: str | None = None
    submitter_claimed: str | None = None
    subject: str | None = None


class RunCompleted(Event):
    steps_completed: int
    outputs: JsonObject
    llm_tokens: int = 0
    llm_cost: float = 0.0


class RunFailed(Event):
    cause: str
    reason: str
    failed_step: int | None = None


class RunCancelled(Event):
    cause: str
    reason: str
    switch_id: str | None = None


class RunEscalated(Event):
    cause: str
    reason: str
    step: int | None = None
    llm_tokens: int = 0
    llm_cost: float = 0.0
    context: JsonObject = {}


class RunHandedOff(Event):
    to_agent: str
    context: JsonObject
    depth: int
    task: str = ""
    triggered_by: str | None = None
    signature: str | None = None


class RunWaiting(Event):
    step: int
    event_name: str
    key: str
    timeout_s: float


class WaitExpired(Event):
    step: int
    event_name: str
    key: str
    signature: str | None = None


class RunInstructed(Event):
    command: str
    instruction: str = ""
    instructed_by: str
    signature: str | None = None


class ActionProposed(Event):
    action: Action
    llm_tokens: int = 0
    llm_cost: float = 0.0
    triggered_by: str | None = None
    amended_by: str | None = None
    amends: str | None = None
    signature: str | None = None


class ActionApproved(Event):
    action: Action
    decision: Decision
    approved_by: str
    revalidated: bool = False
    approval_id: str | None = None
    approvers: list[Approver] = []
    signature: str | None = None

    @property
    def executable(self) -> bool:
        """Policy allowed it outright, or decided again after a human approved it."""
        return self.approved_by == "policy" or self.revalidated


class ActionRejected(Event):
    action: Action
    decision: Decision
    rejected_by: str


class ApprovalRequested(Event):
    approval_id: str
    action: Action
    decision: Decision
    action_hash: str | None = None
    agent_owner: str | None = None
    triggered_by: str | None = None
    amended_by: str | None = None


class ApprovalGranted(Event):
    approval_id: str
    approver: str
    approver_email: str | None = None
    comment: str | None = None
    action_hash: str | None = None
    approver_roles: list[str] = []
    signature: str | None = None


class ApprovalRejected(Event):
    approval_id: str
    approver: str
    approver_email: str | None = None
    reason: str | None = None
    action_hash: str | None = None
    approver_roles: list[str] = []
    signature: str | None = None


class ApprovalAmended(Event):
    approval_id: str
    approver: str
    approver_email: str | None = None
    parameters: JsonObject
    comment: str | None = None
    action_hash: str | None = None
    approver_roles: list[str] = []
    signature: str | None = None


class ApprovalExpired(Event):
    approval_id: str
    requested_at: datetime
    signature: str | None = None


class ApprovalRefused(Event):
    approval_id: str
    approver: str | None = None
    attempted: str
    code: str
    reason: str
    decision_event_id: str


class ActionExecuted(Event):
    action: Action
    idempotency_key: str
    result: JsonObject
    duration_ms: float
    attempts: int
    dry_run: bool = False


class ActionFailed(Event):
    action: Action
    idempotency_key: str
    error: str
    error_type: str
    in_doubt: bool
    attempts: int


class ToolUnavailable(Event):
    action: Action
    idempotency_key: str
    failures: int
    retry_after_s: float
    reason: str


class DeadLettered(Event):
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None = None
    value: bytes
    reason: str
    error_type: str
    service: str
    # The original's "sha256:<hex>" and length, so an original too big to keep whole is still
    # known; None in letters from before they were added.
    digest: str | None = None
    original_size: int | None = None
    # `value` holds only the original's first bytes: it did not fit under the broker's limit.
    truncated: bool = False


class KillSwitchSet(Event):
    switch_id: str
    scope_agent: str | None = None
    scope_tool: str | None = None
    active: bool
    reason: str
    set_by: str
    signature: str | None = None


class KillSwitchAcknowledged(Event):
    switch_id: str
    active: bool
    service: str
    instance: str


class PolicyReloaded(Event):
    policy_hash: str
    policy_ids: list[str]
    files: list[str]
    valid: bool
    error: str | None = None
    sources: JsonObject = {}


class CheckpointSigned(Event):
    size: int
    root: str
    signed_at_us: int
    key_id: str
    signature: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        TriggerReceived,
        RunStarted,
        RunCompleted,
        RunFailed,
        RunCancelled,
        RunEscalated,
        RunInstructed,
        RunHandedOff,
        RunWaiting,
        WaitExpired,
        ActionProposed,
        ActionApproved,
        ActionRejected,
        ApprovalRequested,
        ApprovalGranted,
        ApprovalRejected,
        ApprovalAmended,
        ApprovalExpired,
        ApprovalRefused,
        ActionExecuted,
        ActionFailed,
        ToolUnavailable,
        DeadLettered,
        KillSwitchSet,
        KillSwitchAcknowledged,
        PolicyReloaded,
        CheckpointSigned,
    )
}

RUN_TERMINAL = (RunCompleted, RunFailed, RunCancelled, RunEscalated)
