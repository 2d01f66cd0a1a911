"""The whole configuration (:class:`Settings`) and where its values come from, lowest first:
built-in defaults < TOML file < environment < ``--set`` (see :mod:`scanflow.config`)."""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from scanflow.config.agent import AgentSettings
from scanflow.config.errors import ConfigError
from scanflow.config.model import _coerce
from scanflow.config.sections import (BeamSettings, InfraSettings, KafkaSettings, LakeSettings, PipelineSettings,
                                      PolicySettings, TopicsSettings)

ENV_PREFIX = "SCANFLOW_"


@dataclass(frozen=True)
class Settings:
    """Every section; ``Settings()`` is the embedded local default."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    infra: InfraSettings = field(default_factory=InfraSettings)
    topics: TopicsSettings = field(default_factory=TopicsSettings)
    beam: BeamSettings = field(default_factory=BeamSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    lake: LakeSettings = field(default_factory=LakeSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)

    def __post_init__(self) -> None:
        # One setting for the local broker: without an explicit kafka.bootstrap_servers every
        # client connects to the port the broker is started on (infra.kafka_port).
        derived = not self.kafka.bootstrap_servers
        if derived:
            object.__setattr__(self, "kafka", dataclasses.replace(
                self.kafka, bootstrap_servers=self.infra.local_bootstrap()))
        object.__setattr__(self, "_bootstrap_derived", derived)

    @property
    def bootstrap_derived(self) -> bool:
        """True when ``kafka.bootstrap_servers`` was not set and comes from ``infra.kafka_port``."""
        return getattr(self, "_bootstrap_derived", False)

    def bootstrap_mismatch(self) -> str | None:
        """Why ``kafka.bootstrap_servers`` and ``infra.kafka_port`` disagree, or None: an explicit
        bootstrap list that names this machine's loopback but not the port the local broker is
        started on (clients would talk to whatever else listens there)."""
        local = self.kafka.local_ports()
        if not local or self.infra.kafka_port in local:
            return None
        return (f"kafka.bootstrap_servers ({self.kafka.bootstrap_servers}) names a broker on this machine "
                f"but not infra.kafka_port ({self.infra.kafka_port}), where `scanflow infra up` starts "
                "the local broker; clients connect to the bootstrap list. Leave "
                "kafka.bootstrap_servers unset to follow infra.kafka_port, or make the two agree")

    def validate(self) -> "Settings":
        # infra first: a bad infra.kafka_port is named as such, not as the client address made of it.
        for name in _SECTION_ORDER:
            getattr(self, name).validate()
        return self


#: Section name -> its class.
_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Settings)}
#: The order sections are checked in: infra first (see :meth:`Settings.validate`).
_SECTION_ORDER = sorted(_SECTIONS, key=lambda name: name != "infra")


@functools.cache
def _field_types(section: type) -> dict[str, Any]:
    return typing.get_type_hints(section)


def _apply(values: dict[str, dict[str, Any]], section: str, key: str, raw: Any, source: str) -> None:
    """Record ``section.key = raw`` from ``source``, converted to the key's type (the checks of its
    value run on the final one: a later source overrides an earlier one)."""
    if section not in _SECTIONS:
        raise ConfigError(f"{source}: unknown section {section!r}; known sections: "
                          f"{', '.join(sorted(_SECTIONS))}")
    types = _field_types(_SECTIONS[section])
    if key not in types:
        raise ConfigError(f"{source}: unknown key {section}.{key}; known keys of [{section}]: "
                          f"{', '.join(sorted(types))}")
    values.setdefault(section, {})[key] = _coerce(f"{section}.{key}", raw, types[key])


def load_settings(config_file: str | os.PathLike[str] | None = None,
                  overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None,
                  warnings: list[str] | None = None) -> Settings:
    """Build validated :class:`Settings` from a TOML file, the environment and ``section.key`` overrides.

    ``warnings``, when given, receives one line per setting that is valid but probably not meant:
    today an explicit ``kafka.bootstrap_servers`` on this machine that misses an explicit
    ``infra.kafka_port`` (see :meth:`Settings.bootstrap_mismatch`).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, dict[str, Any]] = {}

    path = config_file or environ.get("SCANFLOW_CONFIG") or None
    if path is None and Path("scanflow.toml").is_file():
        path = "scanflow.toml"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing file to --config "
                              "or unset SCANFLOW_CONFIG")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix the syntax") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [section] table")
            for key, raw in table.items():
                _apply(values, section, key, raw, str(path))

    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "SCANFLOW_CONFIG":
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section in _SECTIONS and key:
            _apply(values, section, key, raw, f"environment variable {name}")

    for dotted, raw in (overrides or {}).items():
        section, sep, key = dotted.partition(".")
        if not sep:
            raise ConfigError(f"--set {dotted}: write section.key=value, e.g. kafka.bootstrap_servers=host:9092")
        _apply(values, section, key, raw, f"--set {dotted}")

    settings = Settings(**{name: cls(**values.get(name, {})) for name, cls in _SECTIONS.items()}).validate()
    if warnings is not None and "kafka_port" in values.get("infra", {}):
        mismatch = settings.bootstrap_mismatch()
        if mismatch:
            warnings.append(mismatch)
    return settings


def parse_set_options(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["a.b=c", ...]`` from repeated ``--set`` flags into a mapping."""
    out: dict[str, str] = {}
    for item in items:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"--set {item!r}: write section.key=value, e.g. --set infra.kafka_port=9092")
        out[dotted.strip()] = value
    return out
