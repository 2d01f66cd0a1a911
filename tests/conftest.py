"""Fixtures shared by every test layer.

Integration and e2e tests use a real Kafka broker: the session fixture ``kafka`` starts it through the
project's own infra script if nothing answers at the configured address, and stops it at the end only
if it started it. Every test gets unique topic names from ``make_topic``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid

import pytest

from scanflow.config import REPO_ROOT, Settings, load_settings

KAFKA_SCRIPT = REPO_ROOT / "infra" / "kafka" / "kafka.sh"

pytest_plugins = ["tests.integration.prism_fixtures"]


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings as a user would have them (file, environment), for the services the tests use."""
    return load_settings(environ={k: v for k, v in os.environ.items() if k.startswith("SCANFLOW_")})


def _kafka_script(settings: Settings, action: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.infra.script_env(), "SCANFLOW_PYTHON": sys.executable, **extra_env}
    return subprocess.run(["bash", str(KAFKA_SCRIPT), action], env=env, capture_output=True, text=True)


@pytest.fixture(scope="session")
def kafka(settings: Settings):
    """A real broker's kafka-python client options; started by infra/kafka/kafka.sh when needed."""
    started_here = False
    if _kafka_script(settings, "status", SCANFLOW_INFRA_STATUS_TIMEOUT_S="3").returncode != 0:
        result = _kafka_script(settings, "up")
        if result.returncode != 0:
            pytest.fail(f"could not start Kafka via infra/kafka/kafka.sh:\n{result.stdout}\n{result.stderr}")
        started_here = True
    yield settings.kafka
    if started_here and os.environ.get("SCANFLOW_KEEP_KAFKA") != "1":
        _kafka_script(settings, "down")


@pytest.fixture
def make_topic(kafka):
    """Factory: ``make_topic(partitions=3, **configs) -> name`` creates a uniquely named topic."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka.client_options())
    created: list[str] = []

    def factory(prefix: str = "test", partitions: int = 3, **configs: str) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1,
                                    "configs": dict(configs)}},
                            timeout_ms=30_000, wait_for_metadata=True)
        created.append(name)
        return name

    yield factory
    if created:
        try:
            admin.delete_topics(created)
        except Exception:  # noqa: BLE001 - cleanup of a test topic must not fail the test
            pass
    admin.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def second_broker(tmp_path):
    """A broker of its own (free ports, temporary state dir) that a test may stop, kill and restart;
    never the session broker. Returns ``run(action)`` (kafka.sh up|down|status|reset) with ``.port``,
    ``.state``, ``.bootstrap`` and ``.env`` (the variables that point scanflow at it)."""
    env = dict(os.environ, SCANFLOW_INFRA_KAFKA_PORT=str(free_port()),
               SCANFLOW_INFRA_KAFKA_CONTROLLER_PORT=str(free_port()),
               SCANFLOW_INFRA_STATE_DIR=str(tmp_path / "broker"), SCANFLOW_INFRA_KAFKA_HEAP="512m",
               SCANFLOW_PYTHON=sys.executable)

    def run(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(KAFKA_SCRIPT), action], env=env, capture_output=True,
                              text=True, timeout=180)

    run.env = env
    run.port = int(env["SCANFLOW_INFRA_KAFKA_PORT"])
    run.state = tmp_path / "broker" / "kafka"
    run.bootstrap = f"127.0.0.1:{run.port}"
    yield run
    run("down")


def free_port_block(n: int, tries: int = 50, host: str = "127.0.0.1") -> int:
    """A port ``p`` such that ``p .. p + n - 1`` on 127.0.0.1 (and on ``host``) are all free right now."""
    for _ in range(tries):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                for addr in {"127.0.0.1", host}:
                    s = socket.socket()
                    socks.append(s)
                    s.bind((addr, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports found")


class LocalCluster:
    """A three-node KRaft cluster of a test's own, started by infra/kafka/kafka.sh (free ports, its
    own state dir); never the session broker. Node i listens on ``host:port + 2(i-1)`` (``host``:
    127.0.0.1, or another address of this machine, e.g. the host end of a test's veth pair)."""

    def __init__(self, state_root, brokers: int = 3, host: str = "127.0.0.1"):
        base = free_port_block(2 * brokers, host=host)
        self.brokers = brokers
        self.port = base
        self.host = host
        self.env = dict(os.environ, SCANFLOW_INFRA_KAFKA_PORT=str(base), SCANFLOW_INFRA_KAFKA_HOST=host,
                        SCANFLOW_INFRA_KAFKA_CONTROLLER_PORT=str(base + 1),
                        SCANFLOW_INFRA_KAFKA_BROKERS=str(brokers), SCANFLOW_INFRA_STATE_DIR=str(state_root),
                        SCANFLOW_INFRA_KAFKA_HEAP="512m", SCANFLOW_PYTHON=sys.executable,
                        # three JVMs starting on a loaded 2-core machine: give them time to register
                        SCANFLOW_INFRA_STATUS_TIMEOUT_S="180")
        self.env.pop("SCANFLOW_KAFKA_BOOTSTRAP_SERVERS", None)
        self.state = state_root / "kafka-cluster"
        self.bootstrap = ",".join(f"{host}:{self.node_port(i)}" for i in range(1, brokers + 1))

    def node_port(self, node: int) -> int:
        return self.port + 2 * (node - 1)

    def run(self, action: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(KAFKA_SCRIPT), action], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def pid(self, node: int) -> int:
        return int((self.state / f"node-{node}" / "kafka.pid").read_text())

    def kafka(self):
        """Client settings for this cluster (the whole bootstrap list)."""
        import dataclasses

        from scanflow.config import KafkaSettings
        return dataclasses.replace(KafkaSettings(), bootstrap_servers=self.bootstrap)


@contextlib.contextmanager
def running_cluster(state_root, host: str = "127.0.0.1"):
    """A three-node ``LocalCluster`` on ``host``, up; stopped on exit (the test fails if it cannot start)."""
    cluster = LocalCluster(state_root, host=host)
    up = cluster.run("up")
    try:
        if up.returncode != 0:
            pytest.fail(f"could not start the cluster via infra/kafka/kafka.sh:\n{up.stdout}\n{up.stderr}")
        yield cluster
    finally:
        cluster.run("down")


@pytest.fixture
def kafka_cluster(tmp_path):
    """A three-node cluster of the test's own (``LocalCluster``), up; stopped at the end."""
    with running_cluster(tmp_path / "cluster") as cluster:
        yield cluster
