"""Named worlds for ``scanflow evaluate --scenario NAME``: the calibrated default and the worlds a
policy must also survive.

A scenario is a set of :class:`scanflow.world.WorldConfig` overrides on top of the defaults (which
are the ``paper`` scenario: every default either a measured fact or a named assumption, see
``docs/WORLD.md``); ``--world KEY=VALUE`` still overrides anything after the scenario is applied.
Each scenario changes one thing the paper did not measure, so a policy's result on it says how much
that result depends on the assumption:

- ``paper``: consistent with every measured fact, Table 4's PDR included (the default);
- ``sporadic-heavy``: the world before it was calibrated to Table 4: an eighth of the responsive
  hosts answer only now and then (8 % of the time), half of the ~25 % that change;
- ``churn-heavy``: every occupant of a dynamic address is a different, independently drawn device
  (no pool of a few router models, nobody moves);
- ``mobile``: most pooled devices move to another address of their pool when their lease ends,
  keeping their fingerprint;
- ``flat``: no structure: hosts spread uniformly over the addresses, nobody moves, no firmware
  updates, no software stacks (the world's structure before it was added).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

DEFAULT_SCENARIO = "paper"


@dataclass(frozen=True)
class Scenario:
    """A named world: ``world`` holds the :class:`~scanflow.world.WorldConfig` fields it changes."""

    name: str
    summary: str
    world: Mapping[str, Any] = field(default_factory=dict)

    def config(self, base=None, overrides: Mapping[str, str] | None = None):
        """The scenario's world: ``base`` (default :class:`~scanflow.world.WorldConfig`) with the
        scenario's fields, then ``overrides`` (``--world KEY=VALUE`` text) on top."""
        from scanflow.world import WorldConfig

        cfg = (base or WorldConfig()).replace(**dict(self.world))
        return cfg.with_overrides(overrides) if overrides else cfg


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("paper", "calibrated to every measured fact, Table 4's PDR included (the default)"),
    Scenario("sporadic-heavy", "an eighth of responsive hosts answer 8 % of the time (the pre-calibration shares)",
             {"sporadic_share": 0.125, "dynamic_share": 0.125, "static_tenure_days": 365.0}),
    Scenario("churn-heavy", "every occupant of a dynamic address a different, independent device",
             {"dynamic_pool_types": 0, "pool_move_share": 0.0}),
    Scenario("mobile", "most pooled devices move to another address of their pool, keeping their fingerprint",
             {"pool_move_share": 0.9}),
    Scenario("flat", "no structure: uniform placement, nobody moves, no firmware updates, no software stacks",
             {"blocks": False, "pool_move_share": 0.0, "firmware_update_days": 0.0, "stacks": False}),
)}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
