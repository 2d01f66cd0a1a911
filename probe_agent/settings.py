"""The probe agent's settings: one frozen dataclass, validated once at start.

Every safety setting defaults to the safe side: an empty allowlist refuses every target, the rate
cap is modest, tracked IPs are skipped in sweeps. The agent section of the configuration file uses
the same names (``[agent] rate_pps = 5000``), as do the ``scanflow agent`` flags.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

# The section itself lives in the one typed configuration; re-exported here for the agent's modules.
from scanflow.config import (BACKEND_NAMES, DEFAULT_CONTACT, MAX_BANNER_CAP, TEST_NETWORKS,  # noqa: F401
                             AgentSettings, ConfigError)


def settings_from_mapping(values: Mapping[str, Any], base: AgentSettings | None = None) -> AgentSettings:
    """An :class:`AgentSettings` from ``key -> value`` pairs (strings from the CLI, or TOML values).

    Keys may be written ``agent.key`` or ``key``; values are converted to each field's type with the
    rules of the main configuration (``"a,b"`` for a tuple, ``true``/``false`` for a bool). The
    result is validated.
    """
    from scanflow.config import _coerce

    hints = typing.get_type_hints(AgentSettings)
    changes: dict[str, Any] = {}
    for dotted, raw in values.items():
        key = dotted[len("agent."):] if dotted.startswith("agent.") else dotted
        if key not in hints:
            raise ConfigError(f"unknown key agent.{key}; known keys of [agent]: {', '.join(sorted(hints))}")
        changes[key] = _coerce(f"agent.{key}", raw, hints[key])
    return dataclasses.replace(base or AgentSettings(), **changes).validate()
