"""`scanflow topics create` applies infra/topics.toml idempotently on the real broker."""

from __future__ import annotations

import dataclasses
import time
import uuid

from click.testing import CliRunner

from connectors.kafka_admin import admin_client, apply_topics, load_topic_specs
from scanflow.cli import main
from scanflow.config import TopicsSettings


def _unique_topics() -> TopicsSettings:
    tag = uuid.uuid4().hex[:8]
    return TopicsSettings(events=f"t{tag}.events", commands=f"t{tag}.commands",
                          ip_state=f"t{tag}.ip-state", dead_letter=f"t{tag}.dead-letter")


def test_declared_topics_are_created_once_then_reconciled(kafka):
    topics = _unique_topics()
    specs = load_topic_specs(topics)
    admin = admin_client(kafka)
    try:
        first = apply_topics(admin, specs)
        assert set(first.values()) == {"created"} and len(first) == 4
        second = apply_topics(admin, specs)
        assert set(second.values()) == {"unchanged"}, "applying twice changes nothing"

        described = {t["name"]: t for t in admin.describe_topics(list(first))}
        for spec in specs:
            assert len(described[spec.name]["partitions"]) == spec.partitions

        # Grow a partition count and change a config in the declaration: both are reconciled.
        grown = [dataclasses.replace(s, partitions=s.partitions + 2,
                                     config={**s.config, "retention.ms": "3600000"})
                 if s.logical == "events" else s for s in specs]
        third = apply_topics(admin, grown)
        assert third[topics.events] == "updated"
        assert [v for k, v in third.items() if k != topics.events] == ["unchanged"] * 3
        assert _partition_count(admin, topics.events, specs[0].partitions + 2) == specs[0].partitions + 2
        assert apply_topics(admin, grown)[topics.events] == "unchanged"
    finally:
        admin.delete_topics([s.name for s in specs])
        admin.close()


def _partition_count(admin, topic: str, want: int, timeout_s: float = 15.0) -> int:
    """The topic's partition count once metadata shows ``want`` (growth propagates asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        (described,) = admin.describe_topics([topic])
        have = len(described["partitions"])
        if have == want or time.monotonic() > deadline:
            return have
        time.sleep(0.2)


def test_ip_state_topic_is_compacted(kafka):
    from kafka.admin import ConfigResource, ConfigResourceType

    topics = _unique_topics()
    specs = load_topic_specs(topics)
    admin = admin_client(kafka)
    try:
        apply_topics(admin, specs)
        result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.ip_state)])
        (configs,) = result["topic"].values()
        assert configs["cleanup.policy"]["value"] == "compact"
    finally:
        admin.delete_topics([s.name for s in specs])
        admin.close()


def test_topics_create_command_reports_each_topic(kafka):
    topics = _unique_topics()
    args = [f"--set=topics.{k}={getattr(topics, k)}" for k in ("events", "commands", "ip_state", "dead_letter")]
    runner = CliRunner()
    try:
        created = runner.invoke(main, [*args, f"--set=kafka.bootstrap_servers={kafka.bootstrap_servers}",
                                       "topics", "create"])
        assert created.exit_code == 0, created.output
        assert created.output.count("topics: created") == 4
        again = runner.invoke(main, [*args, "topics", "create"])
        assert again.output.count("topics: unchanged") == 4
    finally:
        admin = admin_client(kafka)
        admin.delete_topics([getattr(topics, k) for k in ("events", "commands", "ip_state", "dead_letter")])
        admin.close()
