"""The typed configuration: precedence, coercion and one-line errors that name the key and the fix."""

from __future__ import annotations

import pytest

from scanflow.config import REPO_ROOT, ConfigError, Settings, load_settings, parse_set_options, resolve_path


def test_defaults_are_the_local_stack():
    s = load_settings(environ={})
    assert s == Settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.topics.events == "scanflow.events"
    assert s.beam.runner == "prism"


def test_precedence_file_then_environment_then_set(tmp_path):
    cfg = tmp_path / "scanflow.toml"
    cfg.write_text('[kafka]\nbootstrap_servers = "198.18.0.1:9092"\nclient_id = "from-file"\n'
                   '[infra]\nkafka_port = 19092\n')
    env = {"SCANFLOW_KAFKA_CLIENT_ID": "from-env", "SCANFLOW_INFRA_STATUS_TIMEOUT_S": "5.5"}
    s = load_settings(cfg, {"kafka.client_id": "from-cli"}, environ=env)
    assert s.kafka.bootstrap_servers == "198.18.0.1:9092"  # file
    assert s.infra.kafka_port == 19092                   # file, coerced to int
    assert s.infra.status_timeout_s == 5.5               # environment, coerced to float
    assert s.kafka.client_id == "from-cli"               # --set wins


def test_config_file_from_environment_variable(tmp_path):
    cfg = tmp_path / "other.toml"
    cfg.write_text('[topics]\nevents = "prod.events"\n')
    assert load_settings(environ={"SCANFLOW_CONFIG": str(cfg)}).topics.events == "prod.events"


@pytest.mark.parametrize("content, fragment", [
    ('[kafka]\nbootstrap_server = "x:1"\n', "unknown key kafka.bootstrap_server"),
    ('[kafak]\nclient_id = "x"\n', "unknown section 'kafak'"),
    ('[infra]\nkafka_port = "abc"\n', "infra.kafka_port: expected a whole number"),
    ('[infra]\nkafka_port = 80\n', "infra.kafka_port: 80 is outside 1024..65535"),
    ('[kafka]\nbootstrap_servers = "nohostport"\n', "is not HOST:PORT"),
    ('[kafka]\nsecurity_protocol = "SASL_SSL"\n', "kafka.sasl_mechanism: required"),
    ('[beam]\nrunner = "direct"\n', "beam.runner: 'direct' is not one of"),
    ('[topics]\nevents = "bad topic!"\n', "not a valid Kafka topic name"),
    ('kafka = 3\n', "must be a [section] table"),
    ('[kafka\n', "is not valid TOML"),
])
def test_bad_file_values_name_the_key(tmp_path, content, fragment):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=None) as err:
        load_settings(cfg, environ={})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value).strip(), "errors are one line"


def test_bad_environment_key_is_reported_with_its_variable():
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"SCANFLOW_KAFKA_BOOTSTRAP": "x:1"})
    assert "SCANFLOW_KAFKA_BOOTSTRAP" in str(err.value) and "bootstrap_servers" in str(err.value)


def test_unrelated_environment_variables_are_ignored():
    s = load_settings(environ={"SCANFLOW_PYTHON": "/usr/bin/python3", "SCANFLOW_KEEP_KAFKA": "1"})
    assert s == Settings()


def test_missing_config_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_set_options_parse_and_reject_malformed():
    assert parse_set_options(["kafka.client_id=a=b", "infra.kafka_port= 1"]) == {
        "kafka.client_id": "a=b", "infra.kafka_port": " 1"}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set_options(["novalue"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_settings(overrides={"nodot": "1"}, environ={})


def test_client_options_carry_security_settings():
    s = load_settings(overrides={"kafka.security_protocol": "SASL_SSL", "kafka.sasl_mechanism": "PLAIN",
                                 "kafka.sasl_username": "u", "kafka.sasl_password": "p",
                                 "kafka.ssl_cafile": "/etc/ca.pem",
                                 "kafka.bootstrap_servers": "a:9092, b:9093"}, environ={})
    opts = s.kafka.client_options()
    assert opts["bootstrap_servers"] == ["a:9092", "b:9093"]
    assert opts["sasl_plain_username"] == "u" and opts["sasl_plain_password"] == "p"
    assert opts["ssl_cafile"] == "/etc/ca.pem" and opts["security_protocol"] == "SASL_SSL"


def test_infra_script_environment_uses_the_same_names_as_overrides():
    s = load_settings(overrides={"infra.kafka_port": "19092", "infra.state_dir": "/tmp/x"}, environ={})
    env = s.infra.script_env()
    assert env["SCANFLOW_INFRA_KAFKA_PORT"] == "19092"
    assert env["SCANFLOW_INFRA_STATE_DIR"] == "/tmp/x"
    # and reading that environment back gives the same settings
    assert load_settings(environ=env).infra == s.infra


def test_relative_paths_resolve_against_the_checkout():
    assert resolve_path("infra/topics.toml") == REPO_ROOT / "infra" / "topics.toml"
    assert str(resolve_path("/abs/p")) == "/abs/p"


def test_policy_section_builds_the_papers_parameters_by_default():
    from scanflow.policy import PolicyParams, params_from_settings

    assert params_from_settings(load_settings(environ={}).policy) == PolicyParams()
    custom = load_settings(overrides={"policy.ladder_hours": "12,24,48", "policy.silent_interval_h": "72"},
                           environ={})
    params = params_from_settings(custom.policy)
    assert params.ladder == (43200.0, 86400.0, 172800.0) and params.silent_interval == 72 * 3600.0


def test_policy_initial_scan_is_each_policys_own_unless_set(tmp_path):
    from pipelines.policy_setup import adaptive_params_from_settings
    from scanflow.policy import PolicyParams, params_from_settings

    assert load_settings(environ={}).policy.initial_scan == "auto"
    assert params_from_settings(load_settings(environ={}).policy).initial_scan == "standard"
    assert adaptive_params_from_settings(load_settings(environ={}).policy).initial_scan == "silent"
    standard = load_settings(overrides={"policy.initial_scan": "standard"}, environ={})
    assert adaptive_params_from_settings(standard.policy).initial_scan == "standard"
    silent = load_settings(overrides={"policy.initial_scan": "silent"}, environ={})
    assert params_from_settings(silent.policy) == PolicyParams(initial_scan="silent")
    cfg = tmp_path / "scanflow.toml"
    cfg.write_text('[policy]\ninitial_scan = "silent"\n')
    assert load_settings(cfg, environ={}).policy.initial_scan == "silent"
    assert load_settings(environ={"SCANFLOW_POLICY_INITIAL_SCAN": "silent"}).policy.initial_scan == "silent"


def test_policy_recall_is_off_by_default_and_set_in_hours():
    from scanflow.policy import params_from_settings

    assert params_from_settings(load_settings(environ={}).policy).recall_interval == 0
    on = load_settings(overrides={"policy.recall_interval_h": "12", "policy.recall_for_h": "72"}, environ={})
    params = params_from_settings(on.policy)
    assert params.recall_interval == 12 * 3600.0 and params.recall_for == 72 * 3600.0


@pytest.mark.parametrize("override, fragment", [
    ({"policy.initial_scan": "full"}, "policy.initial_scan: 'full' is not one of auto, standard, silent"),
    ({"policy.name": "fast"}, "policy.name: 'fast' is not one of adaptive, paper"),
    ({"policy.followup_delay_s": "-1"}, "policy.followup_delay_s: must be >= 0"),
    ({"policy.followup_delay_s": "50000"}, "policy.followup_delay_s: 50000 s is not shorter than policy.cadence_h"),
    ({"policy.light_target": "0"}, "policy.light_target: must be in (0, 1]"),
    ({"policy.recall_interval_h": "-1"}, "policy.recall_interval_h: must be >= 0"),
    ({"policy.recall_for_h": "0"}, "policy.recall_for_h: must be > 0"),
    ({"policy.ladder_hours": "24,12"}, "policy.ladder_hours: must not decrease"),
    ({"policy.min_confidence": "1.5"}, "policy.min_confidence: must be in (0, 1]"),
    ({"policy.kb_files": "no/such/file.toml"}, "policy.kb_files: no/such/file.toml does not exist"),
    ({"policy.ladder_hours": "12,abc"}, "policy.ladder_hours: expected a number"),
])
def test_bad_policy_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_settings(overrides=override, environ={})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value), "errors are one line"


# One setting for the local broker: its port (infra.kafka_port) is where every client connects unless
# kafka.bootstrap_servers is set.

@pytest.mark.parametrize("source", ["file", "environment", "set"])
def test_bootstrap_follows_the_broker_port_from_every_source(tmp_path, source):
    cfg = tmp_path / "scanflow.toml"
    cfg.write_text("[infra]\nkafka_port = 39092\n")
    kwargs = {"file": dict(config_file=cfg, environ={}),
              "environment": dict(environ={"SCANFLOW_INFRA_KAFKA_PORT": "39092"}),
              "set": dict(overrides={"infra.kafka_port": "39092"}, environ={})}[source]
    s = load_settings(**kwargs)
    assert s.infra.kafka_port == 39092
    assert s.kafka.bootstrap_servers == "127.0.0.1:39092"
    assert s.kafka.client_options()["bootstrap_servers"] == ["127.0.0.1:39092"]
    assert s.bootstrap_derived


def test_bootstrap_follows_the_port_of_the_highest_precedence_source(tmp_path):
    cfg = tmp_path / "scanflow.toml"
    cfg.write_text("[infra]\nkafka_port = 19092\n")
    env = {"SCANFLOW_INFRA_KAFKA_PORT": "29092"}
    assert load_settings(cfg, environ=env).kafka.bootstrap_servers == "127.0.0.1:29092"
    assert load_settings(cfg, {"infra.kafka_port": "39092"}, environ=env).kafka.bootstrap_servers == \
        "127.0.0.1:39092"


def test_an_explicit_bootstrap_wins_and_an_empty_one_means_the_local_broker(tmp_path):
    s = load_settings(overrides={"infra.kafka_port": "39092", "kafka.bootstrap_servers": "kafka1.example:9093"},
                      environ={})
    assert s.kafka.bootstrap_servers == "kafka1.example:9093" and not s.bootstrap_derived
    assert s.bootstrap_mismatch() is None                 # a remote cluster: the local port does not matter
    empty = load_settings(environ={"SCANFLOW_KAFKA_BOOTSTRAP_SERVERS": "", "SCANFLOW_INFRA_KAFKA_PORT": "39092"})
    assert empty.kafka.bootstrap_servers == "127.0.0.1:39092"


def test_the_infra_script_environment_gives_clients_the_same_address():
    s = load_settings(overrides={"infra.kafka_port": "39092"}, environ={})
    env = s.infra.script_env()
    assert env["SCANFLOW_INFRA_KAFKA_PORT"] == "39092"
    assert load_settings(environ=env).kafka.bootstrap_servers == s.kafka.bootstrap_servers == "127.0.0.1:39092"


@pytest.mark.parametrize("bootstrap, port, warned", [
    ("127.0.0.1:9092", "39092", True),                    # the issue: clients talk to whatever owns 9092
    ("localhost:9092", "39092", True),
    ("127.0.0.1:39092", "39092", False),
    ("127.0.0.1:9092,127.0.0.1:39092", "39092", False),
    ("kafka1.example:9092", "39092", False),             # another machine: not the local broker
    ("127.0.0.1:9092", None, False),                      # the port is not set: nothing disagrees
])
def test_a_local_bootstrap_that_misses_the_broker_port_is_said_once(bootstrap, port, warned):
    env = {"SCANFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    if port:
        env["SCANFLOW_INFRA_KAFKA_PORT"] = port
    warnings: list[str] = []
    s = load_settings(environ=env, warnings=warnings)
    assert s.kafka.bootstrap_servers == bootstrap          # an explicit value is used as given
    assert len(warnings) == int(warned)
    if warned:
        line = warnings[0]
        assert "\n" not in line and "kafka.bootstrap_servers" in line and "infra.kafka_port" in line
        assert port in line and bootstrap in line


def test_kafka_settings_alone_default_to_the_local_broker():
    from scanflow.config import KafkaSettings

    assert KafkaSettings().client_options()["bootstrap_servers"] == ["127.0.0.1:9092"]
    assert Settings().kafka.bootstrap_servers == "127.0.0.1:9092"


def test_the_broker_script_says_when_the_client_address_misses_its_port(tmp_path):
    """infra/kafka/kafka.sh run on its own (no CLI) with a client variable that disagrees."""
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "SCANFLOW_INFRA_STATE_DIR": str(tmp_path), "SCANFLOW_INFRA_KAFKA_PORT": "39092",
           "SCANFLOW_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
    script = str(REPO_ROOT / "infra" / "kafka" / "kafka.sh")
    out = subprocess.run(["bash", script, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and "not running" in out.stdout          # no broker in an empty state dir
    assert "warning" in out.stderr and "9092" in out.stderr and "39092" in out.stderr
    env["SCANFLOW_KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:39092"
    out = subprocess.run(["bash", script, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stderr == ""


# The sections are frozen dataclasses whose fields pydantic types and checks (scanflow/config/model.py).

def test_settings_survive_pickling_as_beam_ships_them_to_workers(tmp_path):
    import pickle

    from apache_beam.internal import pickler

    derived = load_settings(overrides={"infra.kafka_port": "39092", "agent.allowlist": "198.18.0.0/24"}, environ={})
    explicit = load_settings(overrides={"kafka.bootstrap_servers": "kafka1.example:9093"}, environ={})
    for s in (derived, explicit):
        for copy in (pickle.loads(pickle.dumps(s)), pickler.loads(pickler.dumps(s))):
            assert copy == s and copy.bootstrap_derived == s.bootstrap_derived
            assert copy.kafka.client_options() == s.kafka.client_options()
            assert copy.validate() == s
    assert pickle.loads(pickle.dumps(derived.lake)) == derived.lake


def test_sections_are_frozen_and_replace_makes_changed_copies():
    import dataclasses

    from scanflow.config import AgentSettings

    s = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.infra.kafka_port = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kafka = None
    topics = dataclasses.replace(s.topics, events="other.events")
    assert topics.events == "other.events" and s.topics.events == "scanflow.events"
    assert dataclasses.replace(s, topics=topics).topics.events == "other.events"
    assert AgentSettings().replace(rate_pps=5.0).rate_pps == 5.0
    # constructing a section checks nothing; validate() does, with the same one line
    bad = dataclasses.replace(s.infra, kafka_port=70000)
    with pytest.raises(ConfigError, match=r"^infra.kafka_port: 70000 is outside 1024..65535; pick a free port$"):
        bad.validate()


@pytest.mark.parametrize("source, key, value, message", [
    ("toml", "agent.rate_pps", "true", "agent.rate_pps: expected a number, got True"),
    ("toml", "kafka.request_timeout_ms", "1.5", "kafka.request_timeout_ms: expected a whole number, got 1.5"),
    ("toml", "kafka.client_id", "[1]", "kafka.client_id: expected a string, got list"),
    ("toml", "policy.builtin_kb", '"maybe"', "policy.builtin_kb: expected true or false, got 'maybe'"),
    ("toml", "policy.ladder_hours", '[12, "x"]', "policy.ladder_hours: expected a number, got 'x'"),
    ("toml", "agent.allowlist", "3", "agent.allowlist: expected a list, got 3"),
    ("env", "agent.shards", "two", "agent.shards: expected a whole number, got 'two'"),
    ("env", "infra.status_timeout_s", "soon", "infra.status_timeout_s: expected a number, got 'soon'"),
    ("env", "pipeline.catch_up", "maybe", "pipeline.catch_up: expected true or false, got 'maybe'"),
    ("set", "lake.row_group_rows", "many", "lake.row_group_rows: expected a whole number, got 'many'"),
    ("set", "policy.ladder_hours", "12,abc", "policy.ladder_hours: expected a number, got 'abc'"),
    ("set", "agent.skip_tracked", "perhaps", "agent.skip_tracked: expected true or false, got 'perhaps'"),
    # a value of the right type out of range: the rule's own words, from every source
    ("toml", "infra.kafka_port", "70000", "infra.kafka_port: 70000 is outside 1024..65535; pick a free port"),
    ("env", "infra.kafka_port", "70000", "infra.kafka_port: 70000 is outside 1024..65535; pick a free port"),
    ("set", "infra.kafka_port", "70000", "infra.kafka_port: 70000 is outside 1024..65535; pick a free port"),
    ("env", "agent.rate_pps", "0", "agent.rate_pps: must be > 0, got 0.0"),
    ("set", "pipeline.sweep_ranges", "192.0.2.1/24", "pipeline.sweep_ranges: '192.0.2.1/24' is not a CIDR range"),
    ("set", "lake.compression", "lz5", "lake.compression: 'lz5' is not one of zstd, snappy, gzip, none"),
])
def test_a_wrong_value_is_one_line_naming_the_key_from_every_source(tmp_path, source, key, value, message):
    section, name = key.split(".")
    kwargs = {"environ": {}}
    if source == "toml":
        cfg = tmp_path / "scanflow.toml"
        cfg.write_text(f"[{section}]\n{name} = {value}\n")
        kwargs["config_file"] = cfg
    elif source == "env":
        kwargs["environ"] = {f"SCANFLOW_{section.upper()}_{name.upper()}": value}
    else:
        kwargs["overrides"] = parse_set_options([f"{key}={value}"])
    with pytest.raises(ConfigError) as err:
        load_settings(**kwargs)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text


def test_values_are_typed_the_same_from_every_source(tmp_path):
    cfg = tmp_path / "scanflow.toml"
    cfg.write_text('[agent]\nallowlist = ["198.18.0.0/24", "127.0.0.1/32"]\nrate_pps = 250\nskip_tracked = false\n'
                   '[policy]\nladder_hours = [12, 24.5]\n')
    from_file = load_settings(cfg, environ={})
    env = {"SCANFLOW_AGENT_ALLOWLIST": "198.18.0.0/24, 127.0.0.1/32", "SCANFLOW_AGENT_RATE_PPS": "250",
           "SCANFLOW_AGENT_SKIP_TRACKED": "no", "SCANFLOW_POLICY_LADDER_HOURS": "12,24.5"}
    from_env = load_settings(environ=env)
    from_set = load_settings(overrides={"agent.allowlist": "198.18.0.0/24,127.0.0.1/32", "agent.rate_pps": "250",
                                        "agent.skip_tracked": "off", "policy.ladder_hours": "12, 24.5"}, environ={})
    assert from_file == from_env == from_set
    agent = from_file.agent
    assert agent.allowlist == ("198.18.0.0/24", "127.0.0.1/32") and agent.skip_tracked is False
    assert agent.rate_pps == 250.0 and isinstance(agent.rate_pps, float)
    assert from_file.policy.ladder_hours == (12.0, 24.5)
    assert load_settings(overrides={"agent.allowlist": ""}, environ={}).agent.allowlist == ()


def test_every_default_section_is_valid_and_paths_may_be_given_as_paths(tmp_path):
    import dataclasses

    from scanflow.config import AgentSettings

    s = Settings().validate()
    for f in dataclasses.fields(s):
        assert getattr(s, f.name).validate() == getattr(s, f.name)
    AgentSettings(portset_dir=tmp_path).validate()           # a Path where the setting is a path string
    with pytest.raises(ConfigError, match="agent.portset_dir: .* is not a directory"):
        AgentSettings(portset_dir=tmp_path / "absent").validate()


def test_policy_name_is_adaptive_by_default_and_a_bad_one_is_one_line_naming_the_fix(tmp_path):
    assert load_settings(environ={}).policy.name == "adaptive"
    assert load_settings(environ={"SCANFLOW_POLICY_NAME": "paper"}).policy.name == "paper"
    cfg = tmp_path / "scanflow.toml"
    cfg.write_text('[policy]\nname = "papr"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    message = str(err.value)
    assert "\n" not in message and message.startswith("policy.name: 'papr' is not one of adaptive, paper")
    assert "set policy.name or pass --policy" in message
