"""A synthetic internet for evaluating scan policies and for driving the ``sim`` scanner backend.

Public API:

- :class:`WorldConfig` - every parameter, with its source (``docs/WORLD.md``);
- :class:`World` - a generated, seeded world: ``World.generate(config, seed, horizon_days=56)``,
  ``world.probe(ips, ports, t)``, ``world.full_port_scan(t)``, ``world.responsive_at(t)``;
- :func:`survey_world` - the full-port scan of a large sample (the paper's Dec 2018 scan), for
  deriving port sets;
- :mod:`scanflow.world.observe` - the paper's fixed-point observation, run on a world.
"""

from scanflow.world.config import SURVEY_IPS, SURVEY_RESPONSIVE_FRACTION, WorldConfig
from scanflow.world.model import PortMasks, ProbeResponse, World, survey_world
from scanflow.world.ports import TABLE1_PORTS, PortPopularity

__all__ = ["World", "WorldConfig", "PortMasks", "ProbeResponse", "PortPopularity", "TABLE1_PORTS",
           "survey_world", "SURVEY_IPS", "SURVEY_RESPONSIVE_FRACTION"]
