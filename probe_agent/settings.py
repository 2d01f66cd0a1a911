"""The probe agent's settings: one frozen dataclass, validated once at start.

Every safety setting defaults to the safe side: an empty allowlist refuses every target, the rate
cap is modest, tracked IPs are skipped in sweeps. The agent section of the configuration file uses
the same names (``[agent] rate_pps = 5000``), as do the ``scanflow agent`` flags.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from scanflow import __version__
from scanflow.config import ConfigError, resolve_path

#: The contact string when none is configured. It identifies the software only; an operator who
#: scans anything but the test networks must say who they are (see :meth:`AgentSettings.validate`).
DEFAULT_CONTACT = f"scanflow/{__version__} (research scanner; operator contact not configured)"

#: Networks a default contact string may scan: loopback and the benchmarking range (RFC 2544) that
#: tests and benchmarks use inside their own network namespaces.
TEST_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.18.0.0/15"),
                 ipaddress.ip_network("::1/128"))

#: The scanner backends (``probe_agent.backends.BACKENDS``; a test keeps the two in step). Listed here
#: so that these settings depend on nothing but the standard library and scanflow.config.
BACKEND_NAMES = ("connect", "masscan", "sim")

#: Longest banner a ScanEvent may carry (the contract's BANNER_CAP).
MAX_BANNER_CAP = 4096


@dataclass(frozen=True)
class AgentSettings:
    """What one probe agent does and how carefully.

    Safety: ``allowlist`` (CIDRs; empty refuses everything), ``exclude_file`` (opt-out CIDRs, re-read
    when it changes; always wins), ``skip_tracked`` (sweeps skip IPs tracked in ``scanflow.ip-state``),
    ``rate_pps`` (packets/s cap of the whole agent) and ``per_target_pps`` (politeness cap per
    address), ``contact`` (sent as the HTTP/RTSP User-Agent; publish the scan's purpose behind it),
    ``max_range_addresses`` (bigger ranges are refused), ``interface`` (bind probes to one interface).
    """

    backend: str = "sim"
    agent_id: str = ""
    group_id: str = "scanflow-agents"

    allowlist: tuple[str, ...] = ()
    exclude_file: str = ""
    skip_tracked: bool = True
    rate_pps: float = 1000.0
    per_target_pps: float = 20.0
    burst_s: float = 0.05
    max_range_addresses: int = 1 << 24
    contact: str = DEFAULT_CONTACT
    interface: str = ""

    concurrency: int = 256
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    passive_wait_s: float = 2.0
    idle_gap_s: float = 0.3
    banner_cap: int = MAX_BANNER_CAP
    ask_unknown: bool = True
    syn_retries: int = 1

    shards: int = 1
    shard: int = 0
    seed: int = 0
    portset_dir: str = ""
    max_inflight_commands: int = 32
    commit_interval_s: float = 1.0
    stop_grace_s: float = 10.0

    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    log_format: str = "text"
    progress: str = "auto"

    masscan_path: str = "masscan"
    masscan_interface: str = ""
    masscan_router_mac: str = ""
    masscan_adapter_ip: str = ""
    masscan_wait_s: float = 2.0
    masscan_retries: int = 0

    sim_seed: int = 0
    sim_n_ips: int = 65536
    sim_horizon_days: float = 56.0
    sim_epoch_us: int = 0
    sim_loss: float = -1.0

    def validate(self) -> "AgentSettings":
        """Check every value; raise :class:`ConfigError` naming the key and the fix. Returns self."""
        if self.backend not in BACKEND_NAMES:
            raise ConfigError(f"agent.backend: {self.backend!r} is not one of {', '.join(BACKEND_NAMES)}")
        for entry in self.allowlist:
            _network("agent.allowlist", entry)
        if self.exclude_file and not resolve_path(self.exclude_file).is_file():
            raise ConfigError(f"agent.exclude_file: {self.exclude_file} does not exist; create it (it may "
                              "be empty) or leave the setting empty")
        for key in ("rate_pps", "per_target_pps", "burst_s", "connect_timeout_s", "read_timeout_s",
                    "idle_gap_s", "commit_interval_s", "masscan_wait_s", "sim_horizon_days"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"agent.{key}: must be > 0, got {getattr(self, key)}")
        for key in ("passive_wait_s", "stop_grace_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"agent.{key}: must be >= 0, got {getattr(self, key)}")
        if self.per_target_pps > self.rate_pps:
            raise ConfigError(f"agent.per_target_pps: {self.per_target_pps} exceeds agent.rate_pps "
                              f"{self.rate_pps}; the politeness cap must not exceed the agent's cap")
        for key, low, high in (("concurrency", 1, 100_000), ("banner_cap", 1, MAX_BANNER_CAP),
                               ("syn_retries", 1, 10), ("shards", 1, 1 << 16),
                               ("max_inflight_commands", 1, 100_000),
                               ("max_range_addresses", 1, 1 << 32), ("masscan_retries", 0, 10),
                               ("metrics_port", 0, 65535), ("sim_n_ips", 1, 1 << 24)):
            value = getattr(self, key)
            if not low <= value <= high:
                raise ConfigError(f"agent.{key}: {value} is outside {low}..{high}")
        if not 0 <= self.shard < self.shards:
            raise ConfigError(f"agent.shard: {self.shard} must be in 0..{self.shards - 1} (agent.shards "
                              f"is {self.shards}); shards are numbered from 0")
        if not self.contact or len(self.contact) > 256 or not self.contact.isprintable() \
                or not self.contact.isascii():
            raise ConfigError("agent.contact: give a printable ASCII string of 1..256 characters naming "
                              "the operator and where the scan's purpose is published")
        if self.backend in ("connect", "masscan") and self.contact == DEFAULT_CONTACT:
            outside = [n for n in self.allowed_networks() if not any(
                n.version == t.version and n.subnet_of(t) for t in TEST_NETWORKS)]
            if outside:
                raise ConfigError(f"agent.contact: the allowlist reaches beyond the test networks "
                                  f"({outside[0]}); set a contact string that names the operator and "
                                  "the page that publishes the scan's purpose and opt-out address")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"agent.log_format: {self.log_format!r} is not text or json")
        if self.progress not in ("auto", "on", "off"):
            raise ConfigError(f"agent.progress: {self.progress!r} is not auto, on or off")
        if self.portset_dir and not resolve_path(self.portset_dir).is_dir():
            raise ConfigError(f"agent.portset_dir: {self.portset_dir} is not a directory of published "
                              "port sets (JSON files written by PortSet.write)")
        if self.masscan_router_mac and not _is_mac(self.masscan_router_mac):
            raise ConfigError(f"agent.masscan_router_mac: {self.masscan_router_mac!r} is not a MAC "
                              "address like 02:00:00:00:00:01")
        if self.masscan_adapter_ip:
            try:
                ipaddress.IPv4Address(self.masscan_adapter_ip)
            except ValueError:
                raise ConfigError(f"agent.masscan_adapter_ip: {self.masscan_adapter_ip!r} is not an "
                                  "IPv4 address") from None
        if self.sim_loss > 1:
            raise ConfigError(f"agent.sim_loss: {self.sim_loss} is above 1; give a probability, or "
                              "-1 for the world's own loss")
        return self

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The allowlist as parsed networks (validated entries only)."""
        return [_network("agent.allowlist", entry) for entry in self.allowlist]

    def resolved_agent_id(self) -> str:
        """``agent_id``, or the host name (plus the shard when sharded) when it is empty."""
        if self.agent_id:
            return self.agent_id
        import socket

        host = socket.gethostname() or "agent"
        return host if self.shards == 1 else f"{host}-shard{self.shard}of{self.shards}"

    def resolved_group_id(self) -> str:
        """The consumer group: every shard is its own group, so each shard sees every command."""
        return self.group_id if self.shards == 1 else f"{self.group_id}.shard-{self.shard}of{self.shards}"

    def replace(self, **changes: Any) -> "AgentSettings":
        """A copy with ``changes`` (not validated; call :meth:`validate`)."""
        return dataclasses.replace(self, **changes)


def _network(key: str, entry: str):
    try:
        return ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(f"{key}: {entry!r} is not a CIDR range with zero host bits ({exc}); write "
                          "e.g. 192.0.2.0/24 or 192.0.2.7/32") from None


def _is_mac(text: str) -> bool:
    parts = text.replace("-", ":").split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                   for p in parts)


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
