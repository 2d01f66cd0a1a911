"""``[pipeline]`` settings of the Beam scheduler pipeline (docs/PIPELINE.md).

The section is meant to join :class:`scanflow.config.Settings` as ``pipeline``; until it does,
:func:`pipeline_settings` falls back to the defaults. Every value can then come from the TOML file,
``SCANFLOW_PIPELINE_<KEY>`` or ``--set pipeline.<key>=...`` like any other section.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from scanflow.config import ConfigError, resolve_path

HOUR = 3600.0


@dataclass(frozen=True)
class PipelineSettings:
    """What the scheduler pipeline needs beyond the policy's own ``[policy]`` tunables.

    - ``sweep_ranges``: CIDR ranges the silent sweeps cover (empty: no sweeps are issued);
    - ``sweep_prefix``: size of one range command (an IPv4 prefix length; /24 = 256 addresses);
    - ``sweep_tick_s``: how often the live sweep generator issues the blocks that fell due;
    - ``round_timeout_s``: a scan round without its ``ScanDone`` is closed this long after its last
      response (the agent died) and counts as not complete;
    - ``command_ttl_s``: a command may start up to this long after its ``not_before``
      (``expires_at`` = ``not_before`` + ttl);
    - ``dedupe_horizon_s``: how long a closed round's scan id is remembered by round assembly, so a
      round delivered again is not assembled twice (the per-IP state remembers the last
      ``recent_scans`` scan ids for longer);
    - ``rewind_s``: on start the events are re-read from this long before the last committed
      position, so that rounds open when the previous run stopped are assembled again; must be at
      least ``round_timeout_s`` (and cover the longest scan plus the timeout);
    - ``silent_set`` / ``unknown_set`` / ``standard_set``: published port-set files
      (``PortSet.write``); empty: a provisional set built from the knowledge base (see
      :func:`pipelines.policy_setup.policy_port_sets`);
    - ``group_id``: the Kafka consumer group of the live events reader;
    - ``watermark_lag_s``: how far the live watermark trails the newest record (and the wall clock
      when a partition is idle);
    - ``archive_dir``: where the Parquet archive of observations and decisions goes (empty: off).
    """

    sweep_ranges: tuple[str, ...] = ()
    sweep_prefix: int = 24
    sweep_tick_s: float = 60.0
    round_timeout_s: float = 1 * HOUR
    command_ttl_s: float = 6 * HOUR
    dedupe_horizon_s: float = 24 * HOUR
    recent_scans: int = 4
    rewind_s: float = 2 * HOUR
    silent_set: str = ""
    unknown_set: str = ""
    standard_set: str = ""
    group_id: str = "scanflow-scheduler"
    watermark_lag_s: float = 5.0
    archive_dir: str = ""

    def validate(self) -> "PipelineSettings":
        """Raise :class:`ConfigError` naming the key and the fix; returns self."""
        if not 8 <= self.sweep_prefix <= 32:
            raise ConfigError(f"pipeline.sweep_prefix: {self.sweep_prefix} is outside 8..32; "
                              "use e.g. 24 for range commands of 256 addresses")
        for text in self.sweep_ranges:
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError:
                raise ConfigError(f"pipeline.sweep_ranges: {text!r} is not a CIDR range with zero host "
                                  "bits; write e.g. 192.0.2.0/24") from None
            if net.version != 4:
                raise ConfigError(f"pipeline.sweep_ranges: {text} is IPv6; sweeps cover IPv4 ranges only")
            if net.prefixlen > self.sweep_prefix:
                raise ConfigError(f"pipeline.sweep_ranges: {text} is smaller than one sweep block "
                                  f"(/{self.sweep_prefix}); raise pipeline.sweep_prefix to "
                                  f"{net.prefixlen} or widen the range")
        for key in ("sweep_tick_s", "round_timeout_s", "command_ttl_s", "dedupe_horizon_s",
                    "rewind_s", "watermark_lag_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"pipeline.{key}: must be > 0 seconds, got {getattr(self, key)}")
        if self.rewind_s < self.round_timeout_s:
            raise ConfigError(f"pipeline.rewind_s: {self.rewind_s} s is shorter than "
                              f"pipeline.round_timeout_s ({self.round_timeout_s} s): a round open at a "
                              "restart would be lost; raise rewind_s")
        if not 1 <= self.recent_scans <= 16:
            raise ConfigError(f"pipeline.recent_scans: {self.recent_scans} is outside 1..16")
        if not self.group_id:
            raise ConfigError("pipeline.group_id: give the consumer group of the scheduler, "
                              "e.g. scanflow-scheduler")
        for key in ("silent_set", "unknown_set", "standard_set"):
            path = getattr(self, key)
            if path and not resolve_path(path).is_file():
                raise ConfigError(f"pipeline.{key}: {path} does not exist; give a port-set file "
                                  "written by PortSet.write, or leave it empty for the provisional set")
        return self

    def sweep_networks(self) -> tuple[ipaddress.IPv4Network, ...]:
        """The configured sweep ranges, parsed."""
        return tuple(ipaddress.IPv4Network(text) for text in self.sweep_ranges)


def pipeline_settings(settings) -> PipelineSettings:
    """The ``[pipeline]`` section of ``settings`` (:class:`scanflow.config.Settings`), validated;
    the defaults while the section is not part of ``Settings`` yet."""
    section = getattr(settings, "pipeline", None)
    return (section if isinstance(section, PipelineSettings) else PipelineSettings()).validate()
