"""One typed configuration for every scanflow command.

Precedence, lowest first: built-in defaults < TOML file < environment < CLI flags.

- TOML file: ``--config PATH``, else ``$SCANFLOW_CONFIG``, else ``./scanflow.toml`` if it exists.
  Sections are the fields of :class:`Settings` (``[kafka]``, ``[infra]``, ...).
- Environment: ``SCANFLOW_<SECTION>_<KEY>``, e.g. ``SCANFLOW_KAFKA_BOOTSTRAP_SERVERS``.
- CLI: ``--set section.key=value`` (repeatable) and the few dedicated flags of each command.

Everything is validated once at start; a bad key or value raises :class:`ConfigError` whose message
names the key, what was wrong and how to fix it. Sections are frozen dataclasses so a loaded
configuration can be passed around (and pickled into Beam workers) without being changed.

The parts: :mod:`.errors` (the errors), :mod:`.model` (how a section's fields are typed and checked,
with pydantic), :mod:`.sections` and :mod:`.agent` (the sections), :mod:`.settings` (the whole and the
precedence of its sources).
"""

from scanflow.config.agent import BACKEND_NAMES, DEFAULT_CONTACT, MAX_BANNER_CAP, TEST_NETWORKS, AgentSettings
from scanflow.config.errors import ConfigError, KafkaNotReady
from scanflow.config.model import REPO_ROOT, _coerce, resolve_path  # noqa: F401 - _coerce: probe_agent.settings
from scanflow.config.sections import (DEFAULT_KAFKA_PORT, LAKE_COMPRESSIONS, LOCAL_KAFKA_HOST, POLICY_NAMES,
                                      BeamSettings, InfraSettings, KafkaSettings, LakeSettings, PipelineSettings,
                                      PolicySettings, TopicsSettings)
from scanflow.config.settings import ENV_PREFIX, Settings, load_settings, parse_set_options

__all__ = [
    "BACKEND_NAMES", "DEFAULT_CONTACT", "DEFAULT_KAFKA_PORT", "ENV_PREFIX", "LAKE_COMPRESSIONS",
    "LOCAL_KAFKA_HOST", "MAX_BANNER_CAP", "POLICY_NAMES", "REPO_ROOT", "TEST_NETWORKS", "AgentSettings", "BeamSettings",
    "ConfigError", "InfraSettings", "KafkaNotReady", "KafkaSettings", "LakeSettings", "PipelineSettings",
    "PolicySettings", "Settings", "TopicsSettings", "load_settings", "parse_set_options", "resolve_path",
]
