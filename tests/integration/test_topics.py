"""`scanflow topics create` applies infra/topics.toml idempotently on the real broker."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import uuid

import pytest

from click.testing import CliRunner

from connectors.kafka_admin import admin_client, apply_topics, load_topic_specs
from scanflow.cli import main
from scanflow.config import TopicsSettings


def _unique_topics() -> TopicsSettings:
    tag = uuid.uuid4().hex[:8]
    return TopicsSettings(events=f"t{tag}.events", commands=f"t{tag}.commands",
                          ip_state=f"t{tag}.ip-state", dead_letter=f"t{tag}.dead-letter",
                          kb_updates=f"t{tag}.kb-updates")


def test_declared_topics_are_created_once_then_reconciled(kafka):
    topics = _unique_topics()
    specs = load_topic_specs(topics)
    admin = admin_client(kafka)
    try:
        first = apply_topics(admin, specs)
        assert set(first.values()) == {"created"} and len(first) == 5
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
        assert [v for k, v in third.items() if k != topics.events] == ["unchanged"] * 4
        (events,) = admin.describe_topics([topics.events])
        assert len(events["partitions"]) == specs[0].partitions + 2, "returns once the change is visible"
        assert apply_topics(admin, grown)[topics.events] == "unchanged"
    finally:
        admin.delete_topics([s.name for s in specs])
        admin.close()


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
    names = ("events", "commands", "ip_state", "dead_letter", "kb_updates")
    args = [f"--set=topics.{k}={getattr(topics, k)}" for k in names]
    runner = CliRunner()
    try:
        created = runner.invoke(main, [*args, f"--set=kafka.bootstrap_servers={kafka.bootstrap_servers}",
                                       "topics", "create"])
        assert created.exit_code == 0, created.output
        assert created.output.count("topics: created") == 5
        again = runner.invoke(main, [*args, "topics", "create"])
        assert again.output.count("topics: unchanged") == 5
    finally:
        admin = admin_client(kafka)
        admin.delete_topics([getattr(topics, k) for k in names])
        admin.close()


def test_an_external_client_lists_the_declared_topics(kafka):
    """kcat (librdkafka, not kafka-python) sees the topics `scanflow topics create` declared."""
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (infra/system-deps.sh installs it)")
    topics = _unique_topics()
    specs = load_topic_specs(topics)
    admin = admin_client(kafka)
    try:
        apply_topics(admin, specs)
        listing = subprocess.run([kcat, "-L", "-b", kafka.bootstrap_servers, "-J"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
        seen = {t["topic"]: len(t["partitions"]) for t in json.loads(listing)["topics"]}
        for spec in specs:
            assert seen.get(spec.name) == spec.partitions
    finally:
        admin.delete_topics([s.name for s in specs])
        admin.close()
