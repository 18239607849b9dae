"""Topics keep a bounded history, except what must outlive it: the signed heads, the dead letters
and `control`."""

from __future__ import annotations

from charter import topics
from charter.config import Settings
from charter.topics import Topic


def test_every_topic_but_the_heads_control_and_the_dlqs_keeps_a_bounded_history() -> None:
    settings = Settings(topic_retention_hours=0.5, topic_retention_mb=64)
    kept = {topics.name(settings, Topic.AUDIT_CHECKPOINTS), topics.name(settings, Topic.CONTROL)}
    for name in topics.specs(settings):
        config = topics.configs(settings, name)
        if name in kept or name.endswith(".dlq"):
            assert config == {"retention.ms": "-1", "retention.bytes": "-1"}, name
        else:
            assert config == {
                "retention.ms": str(30 * 60_000),
                "retention.bytes": str(64 * 1024 * 1024),
                "segment.ms": str(30 * 60_000 // 4),  # whole segments go: they roll at a quarter
                "segment.bytes": str(16 * 1024 * 1024),
            }, name
    assert sum(name.endswith(".dlq") for name in topics.specs(settings)) == len(Topic)


def test_by_default_a_week_and_a_gibibyte_a_partition() -> None:
    config = topics.configs(Settings(), topics.name(Settings(), Topic.RUNS))
    assert config["retention.ms"] == str(7 * 24 * 3_600_000)
    assert config["retention.bytes"] == str(1024**3)
