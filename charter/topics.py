"""The topics of the contract, their names, partition counts, and which event goes where.

Every topic is created explicitly before any client touches it: brokers that auto-create
(Tansu always does) would otherwise pick a partition count of their own.
"""

from __future__ import annotations

from enum import StrEnum

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from charter import events as ev
from charter.config import Settings
from charter.errors import ConfigError


class Topic(StrEnum):
    TRIGGERS = "triggers"
    RUNS = "runs"
    ACTIONS_PROPOSED = "actions.proposed"
    ACTIONS_APPROVED = "actions.approved"
    ACTIONS_REJECTED = "actions.rejected"
    APPROVALS_REQUESTED = "approvals.requested"
    APPROVALS_DECIDED = "approvals.decided"
    ACTIONS_RESULTS = "actions.results"
    CONTROL = "control"
    AUDIT_CHECKPOINTS = "audit.checkpoints"


TOPIC_OF: dict[type[ev.Event], Topic] = {
    ev.TriggerReceived: Topic.TRIGGERS,
    # A human's direction of a run reaches the planner with the events that drive runs.
    ev.RunInstructed: Topic.TRIGGERS,
    ev.RunHandedOff: Topic.TRIGGERS,
    ev.WaitExpired: Topic.TRIGGERS,
    ev.RunWaiting: Topic.RUNS,
    ev.RunStarted: Topic.RUNS,
    ev.RunCompleted: Topic.RUNS,
    ev.RunFailed: Topic.RUNS,
    ev.RunCancelled: Topic.RUNS,
    ev.RunEscalated: Topic.RUNS,
    ev.ActionProposed: Topic.ACTIONS_PROPOSED,
    ev.ActionApproved: Topic.ACTIONS_APPROVED,
    ev.ActionRejected: Topic.ACTIONS_REJECTED,
    ev.ApprovalRequested: Topic.APPROVALS_REQUESTED,
    ev.ApprovalGranted: Topic.APPROVALS_DECIDED,
    ev.ApprovalRejected: Topic.APPROVALS_DECIDED,
    ev.ApprovalAmended: Topic.APPROVALS_DECIDED,
    ev.ApprovalExpired: Topic.APPROVALS_DECIDED,
    ev.ApprovalRefused: Topic.APPROVALS_DECIDED,
    ev.ActionExecuted: Topic.ACTIONS_RESULTS,
    ev.ActionFailed: Topic.ACTIONS_RESULTS,
    ev.ToolUnavailable: Topic.ACTIONS_RESULTS,
    ev.PolicyReloaded: Topic.CONTROL,
    ev.KillSwitchSet: Topic.CONTROL,
    ev.KillSwitchAcknowledged: Topic.CONTROL,
    ev.CheckpointSigned: Topic.AUDIT_CHECKPOINTS,
}

DLQ_SUFFIX = ".dlq"


def name(settings: Settings, topic: Topic) -> str:
    return f"{settings.topic_prefix}{topic.value}"


def dlq_name(source_topic: str) -> str:
    return f"{source_topic}{DLQ_SUFFIX}"


def all_names(settings: Settings) -> list[str]:
    """Every topic of the contract, DLQs included."""
    names = [name(settings, t) for t in Topic]
    return names + [dlq_name(n) for n in names]


def resolve(settings: Settings, text: str, *, other: bool = False) -> str:
    """A topic as a user typed it (`runs`, `charter.runs`, `triggers.dlq`) to its full name;
    `other`: a name outside the contract (a sandbox to replay into) is taken as it is."""
    full = text if text.startswith(settings.topic_prefix) else f"{settings.topic_prefix}{text}"
    if other and full not in all_names(settings):
        return text
    if full not in all_names(settings):
        raise ConfigError(f"unknown topic {text!r}; known: {known(settings)}")
    return full


def known(settings: Settings) -> str:
    """The contract's topics as a user types them, for a message naming a topic that is not."""
    return ", ".join(n.removeprefix(settings.topic_prefix) for n in all_names(settings))


def specs(settings: Settings) -> dict[str, int]:
    """Topic name -> partition count."""
    out = {name(settings, t): settings.partitions for t in Topic}
    out.update({dlq_name(n): settings.dlq_partitions for n in list(out)})
    return out


FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
MIB = 1024 * 1024


def configs(settings: Settings, topic: str) -> dict[str, str]:
    """Topic settings beyond the broker's defaults. The audit's signed heads are kept forever,
    since a head that expires can no longer show a log cut short behind it; so are the dead
    letters, which wait for a person, and `control`, from whose beginning a new replica learns
    the kill switches in force (it is small). Every other topic keeps a bounded history
    (CHARTER_TOPIC_RETENTION_HOURS, CHARTER_TOPIC_RETENTION_MB a partition), so a stack that
    runs for months holds bounded disk: what must outlive it is in the SQL stores and the
    audit log. A broker deletes whole segments only, so segments roll at a quarter of either
    bound, and what is kept overshoots it by a quarter at most."""
    kept = (name(settings, Topic.AUDIT_CHECKPOINTS), name(settings, Topic.CONTROL))
    if topic in kept or topic.endswith(DLQ_SUFFIX):
        return dict(FOREVER)
    retention_ms = int(settings.topic_retention_hours * 3_600_000)
    retention_bytes = settings.topic_retention_mb * MIB
    return {
        "retention.ms": str(retention_ms),
        "retention.bytes": str(retention_bytes),
        "segment.ms": str(max(retention_ms // 4, 60_000)),
        "segment.bytes": str(max(retention_bytes // 4, MIB)),
    }


async def ensure_other(settings: Settings, name: str) -> None:
    """Create a topic outside the contract (with the contract's partition count) if missing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap())
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(name, settings.partitions, settings.replication_factor)])
    finally:
        await admin.close()


async def ensure(admin: AIOKafkaAdminClient, settings: Settings) -> list[str]:
    """Create missing topics; refuse to run on existing ones with another partition count."""
    wanted = specs(settings)
    existing = set(await admin.list_topics())
    missing = [
        NewTopic(n, p, settings.replication_factor, topic_configs=configs(settings, n))
        for n, p in wanted.items()
        if n not in existing
    ]
    if missing:
        await admin.create_topics(missing)
    present = [n for n in wanted if n in existing]
    if present:
        for described in await admin.describe_topics(present):
            count = len(described["partitions"])
            if count != wanted[described["topic"]]:
                raise ConfigError(
                    f"topic {described['topic']} has {count} partitions, configuration says "
                    f"{wanted[described['topic']]}; change CHARTER_PARTITIONS or recreate the topic"
                )
    return [t.name for t in missing]
