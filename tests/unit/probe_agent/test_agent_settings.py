"""AgentSettings: safe defaults, validation messages, overrides from strings."""

from __future__ import annotations

import pytest

from probe_agent.settings import DEFAULT_CONTACT, AgentSettings, settings_from_mapping
from scanflow.config import ConfigError


def test_defaults_are_valid_and_safe():
    s = AgentSettings().validate()
    assert s.allowlist == () and s.skip_tracked and s.rate_pps <= 1000
    assert s.backend == "sim"


@pytest.mark.parametrize("changes, message", [
    ({"backend": "zmap"}, "agent.backend"),
    ({"allowlist": ("198.18.0.1/24",)}, "zero host bits"),
    ({"allowlist": ("nonsense",)}, "agent.allowlist"),
    ({"rate_pps": 0}, "agent.rate_pps"),
    ({"per_target_pps": 5000.0, "rate_pps": 100.0}, "politeness"),
    ({"shards": 4, "shard": 4}, "agent.shard"),
    ({"banner_cap": 5000}, "agent.banner_cap"),
    ({"contact": "line\r\nInjected: header"}, "agent.contact"),
    ({"contact": ""}, "agent.contact"),
    ({"exclude_file": "does/not/exist.txt"}, "agent.exclude_file"),
    ({"masscan_router_mac": "zz:00"}, "agent.masscan_router_mac"),
    ({"log_format": "xml"}, "agent.log_format"),
])
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        AgentSettings(**changes).validate()


def test_live_backends_outside_test_networks_need_a_real_contact():
    with pytest.raises(ConfigError, match="contact"):
        AgentSettings(backend="connect", allowlist=("192.0.2.0/24",)).validate()
    AgentSettings(backend="connect", allowlist=("127.0.0.1/32", "198.18.0.0/24")).validate()
    AgentSettings(backend="connect", allowlist=("192.0.2.0/24",),
                  contact="example-lab scanner; purpose and opt-out: https://lab.example/scan").validate()
    assert DEFAULT_CONTACT.startswith("scanflow/")


def test_overrides_from_strings_are_typed_and_validated():
    s = settings_from_mapping({"agent.backend": "connect", "allowlist": "127.0.0.1/32,198.18.0.0/24",
                               "rate_pps": "250", "skip_tracked": "false", "shards": "2", "shard": "1"})
    assert s.backend == "connect" and s.allowlist == ("127.0.0.1/32", "198.18.0.0/24")
    assert s.rate_pps == 250.0 and s.skip_tracked is False
    with pytest.raises(ConfigError, match="unknown key agent.nope"):
        settings_from_mapping({"nope": "1"})
    with pytest.raises(ConfigError, match="whole number"):
        settings_from_mapping({"shards": "two"})


def test_shards_get_their_own_consumer_group_and_agent_id():
    s = AgentSettings(shards=3, shard=1, agent_id="").validate()
    assert s.resolved_group_id() == "scanflow-agents.shard-1of3"
    assert s.resolved_agent_id().endswith("shard1of3")
    assert AgentSettings().resolved_group_id() == "scanflow-agents"


def test_backend_names_match_the_registry():
    from probe_agent.backends import backend_class, backend_names
    from probe_agent.settings import BACKEND_NAMES

    assert sorted(BACKEND_NAMES) == backend_names()
    for name in BACKEND_NAMES:
        assert backend_class(name).name == name
