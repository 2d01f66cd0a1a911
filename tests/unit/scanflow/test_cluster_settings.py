"""infra.kafka_brokers: one setting gives the cluster's nodes and every client's bootstrap list."""

from __future__ import annotations

import pytest

from scanflow.config import ConfigError, load_settings


def _settings(**env: str):
    return load_settings(environ={f"SCANFLOW_{k.upper()}": v for k, v in env.items()})


def test_one_broker_by_default():
    s = _settings()
    assert s.infra.kafka_brokers == 1
    assert s.kafka.servers() == ["127.0.0.1:9092"]
    assert s.infra.script_env()["SCANFLOW_INFRA_KAFKA_BROKERS"] == "1"


def test_three_brokers_give_every_client_three_addresses():
    s = _settings(infra_kafka_brokers="3", infra_kafka_port="19092", infra_kafka_controller_port="19093")
    assert s.kafka.servers() == ["127.0.0.1:19092", "127.0.0.1:19094", "127.0.0.1:19096"]
    assert s.kafka.client_options()["bootstrap_servers"] == s.kafka.servers()
    assert s.infra.script_env()["SCANFLOW_INFRA_KAFKA_BROKERS"] == "3"
    assert s.bootstrap_mismatch() is None


def test_an_explicit_bootstrap_list_wins():
    s = _settings(infra_kafka_brokers="3", kafka_bootstrap_servers="k1:9092, k2:9092,k3:9092")
    assert s.kafka.servers() == ["k1:9092", "k2:9092", "k3:9092"]


@pytest.mark.parametrize("env, message", [
    ({"infra_kafka_brokers": "2"}, "2 nodes cannot lose one"),
    ({"infra_kafka_brokers": "3", "infra_kafka_port": "9092", "infra_kafka_controller_port": "9094"}, "overlap"),
    ({"infra_kafka_brokers": "10"}, "infra.kafka_brokers"),
])
def test_clusters_that_cannot_work_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        _settings(**env).validate()


def test_the_listener_host_gives_every_client_its_address():
    s = _settings(infra_kafka_brokers="3", infra_kafka_host="198.18.250.1")
    assert s.kafka.servers() == ["198.18.250.1:9092", "198.18.250.1:9094", "198.18.250.1:9096"]
    assert s.infra.script_env()["SCANFLOW_INFRA_KAFKA_HOST"] == "198.18.250.1"
    assert _settings().infra.script_env()["SCANFLOW_INFRA_KAFKA_HOST"] == "127.0.0.1"


@pytest.mark.parametrize("host, message", [("broker.local", "not an IPv4 address"), ("0.0.0.0", "cannot be advertised")])
def test_a_listener_host_that_cannot_be_advertised_is_refused(host, message):
    with pytest.raises(ConfigError, match=message):
        _settings(infra_kafka_host=host).validate()
