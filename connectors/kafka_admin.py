"""Kafka administration: the declarative topic list (``infra/topics.toml``) applied idempotently.

``apply_topics`` creates missing topics, grows partition counts that are below the declared ones and
brings topic configs in line with the file. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions
from kafka.errors import TopicAlreadyExistsError

from scanflow.config import ConfigError, KafkaNotReady, KafkaSettings, TopicsSettings, resolve_path

LOGICAL_TOPICS = ("events", "commands", "ip_state", "dead_letter", "kb_updates")

#: How long a command waits for the broker's first answer before saying it is not there.
READY_TIMEOUT_S = 10.0


#: ``replication_factor`` that asks the brokers for their ``default.replication.factor`` (KIP-464).
CLUSTER_DEFAULT = -1


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic."""

    logical: str
    name: str
    partitions: int
    #: -1 (the default when the file names none): the cluster's ``default.replication.factor``, 1 on
    #: the single local broker, 3 on the local cluster (``scanflow infra up --brokers 3``).
    replication_factor: int = CLUSTER_DEFAULT
    config: dict[str, str] = field(default_factory=dict)


def load_topic_specs(topics: TopicsSettings, path: str | Path | None = None) -> list[TopicSpec]:
    """Read the declarative topic list; names come from the ``[topics]`` settings."""
    path = resolve_path(path or topics.file)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"topics.file: {path} does not exist; point topics.file at infra/topics.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"topics.file: {path} is not valid TOML ({exc})") from None
    unknown = set(data) - set(LOGICAL_TOPICS)
    if unknown:
        raise ConfigError(f"{path}: unknown topic table(s) {sorted(unknown)}; "
                          f"expected {', '.join(LOGICAL_TOPICS)}")
    specs = []
    for logical in LOGICAL_TOPICS:
        if logical not in data:
            raise ConfigError(f"{path}: missing [{logical}] table")
        table = data[logical]
        partitions = table.get("partitions")
        if not isinstance(partitions, int) or partitions < 1:
            raise ConfigError(f"{path}: [{logical}] partitions must be a whole number >= 1")
        rf = table.get("replication_factor", CLUSTER_DEFAULT)
        if not isinstance(rf, int) or (rf < 1 and rf != CLUSTER_DEFAULT):
            raise ConfigError(f"{path}: [{logical}] replication_factor must be a whole number >= 1 "
                              "(or left out: the cluster's default.replication.factor)")
        config = {str(k): str(v) for k, v in table.get("config", {}).items()}
        specs.append(TopicSpec(logical, getattr(topics, logical), partitions, rf, config))
    return specs


def require_topics(kafka: KafkaSettings, needed: Mapping[str, str], *,
                   timeout_s: float = READY_TIMEOUT_S) -> None:
    """Return when the broker answers and every topic of ``needed`` (``{setting: topic name}``, e.g.
    ``{"topics.events": "scanflow.events"}``) exists; else raise :class:`KafkaNotReady` with one
    line naming what is missing and the fix. Waits at most about ``timeout_s`` for the broker.

    Commands call this before they start, so a missing topic is an answer, not a producer blocked
    on metadata for minutes (kafka-python's ``send`` waits up to ``max_block_ms`` per record for a
    topic that does not exist, since the broker does not create topics automatically).
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    where = kafka.bootstrap_servers or ",".join(kafka.servers())
    timeout_ms = max(1000, int(timeout_s * 1000))
    try:
        options = {**kafka.client_options(), "bootstrap_timeout_ms": timeout_ms,
                   "request_timeout_ms": min(timeout_ms, kafka.request_timeout_ms), "enable_auto_commit": False}
        probe = KafkaConsumer(**options)
    except KafkaError as exc:
        raise KafkaNotReady(
            f"no Kafka broker answers at {where} (kafka.bootstrap_servers) within {timeout_s:.0f} s "
            f"({type(exc).__name__}); start the local one with `scanflow infra up`, or point "
            "kafka.bootstrap_servers at your cluster") from None
    try:
        existing = probe.topics()
    except KafkaError as exc:
        raise KafkaNotReady(f"the Kafka broker at {where} did not list its topics ({type(exc).__name__}: "
                            f"{exc}); check `scanflow infra status` and the broker log") from None
    finally:
        probe.close()
    missing = [(key, name) for key, name in needed.items() if name not in existing]
    if missing:
        listed = ", ".join(f"{key} ({name!r})" for key, name in missing)
        verb = "does" if len(missing) == 1 else "do"
        raise KafkaNotReady(f"{listed} {verb} not exist on {where}; create the topics with "
                            "`scanflow topics create` (or set the topic names)")


def admin_client(kafka: KafkaSettings) -> KafkaAdminClient:
    """An admin client for the configured cluster (close it when done)."""
    return KafkaAdminClient(**kafka.client_options())


def apply_topics(admin: KafkaAdminClient, specs: Iterable[TopicSpec],
                 report: Callable[[str], None] = lambda line: None) -> dict[str, str]:
    """Create or reconcile every topic; returns ``{topic: created|updated|unchanged}``."""
    specs = list(specs)
    existing = set(admin.list_topics())
    outcome: dict[str, str] = {}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        try:
            admin.create_topics({s.name: {"num_partitions": s.partitions,
                                          "replication_factor": s.replication_factor,
                                          "configs": dict(s.config)} for s in missing},
                                timeout_ms=30_000, wait_for_metadata=True)
        except TopicAlreadyExistsError:  # a concurrent creator won the race: reconcile below
            pass
        for s in missing:
            outcome[s.name] = "created"
            report(f"created {s.name} ({s.partitions} partitions, replication "
                   + (f"{s.replication_factor})" if s.replication_factor != CLUSTER_DEFAULT else
                      f"{_replicas(admin, s.name)}: the cluster's default)"))
    present = [s for s in specs if s.name in existing]
    if present:
        described = {t["name"]: t for t in admin.describe_topics([s.name for s in present])}
        for s in present:
            changes = []
            have = len(described[s.name]["partitions"])
            if have < s.partitions:
                admin.create_partitions({s.name: NewPartitions(total_count=s.partitions)})
                changes.append(f"partitions {have} -> {s.partitions}")
            drift = _config_drift(admin, s)
            if drift:
                admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, s.name, configs=s.config)])
                changes.append("config " + ", ".join(drift))
            if changes:
                _wait_converged(admin, s)
            outcome[s.name] = "updated" if changes else "unchanged"
            report(f"{outcome[s.name]} {s.name}" + (f" ({'; '.join(changes)})" if changes else ""))
    return outcome


def _replicas(admin: KafkaAdminClient, topic: str) -> int:
    (described,) = admin.describe_topics([topic])
    return max((len(p["replica_nodes"]) for p in described["partitions"]), default=0)


def _wait_converged(admin: KafkaAdminClient, spec: TopicSpec, timeout_s: float = 30.0) -> None:
    """Return once metadata shows the declared partitions and configs (changes propagate async)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (described,) = admin.describe_topics([spec.name])
        if len(described["partitions"]) >= spec.partitions and not _config_drift(admin, spec):
            return
        time.sleep(0.2)
    raise TimeoutError(f"topic {spec.name} did not reach its declared state within {timeout_s:.0f} s")


def _config_drift(admin: KafkaAdminClient, spec: TopicSpec) -> list[str]:
    if not spec.config:
        return []
    result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name)])
    current = _described_config_values(result)
    return [f"{k}={current.get(k)!s}->{v}" for k, v in spec.config.items() if current.get(k) != v]


def _described_config_values(result: Any) -> dict[str, str]:
    """``{name: value}`` from kafka-python's DescribeConfigs answer for one topic."""
    (topic_configs,) = result["topic"].values()
    return {name: entry["value"] for name, entry in topic_configs.items()}
