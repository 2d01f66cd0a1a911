"""The ``[agent]`` section: what one probe agent does and how carefully (docs/AGENT.md)."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any

from scanflow import __version__
from scanflow.config.errors import ConfigError
from scanflow.config.model import Float, Int, Section, Strs, between, checked, existing_file, one_of, positive, \
    resolve_path, rule

#: The contact string when none is configured. It identifies the software only; an operator who
#: scans anything but the test networks must say who they are (see :meth:`AgentSettings.check`).
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


def _network(entry: str, key: str = ""):
    try:
        return ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(f"{key}{entry!r} is not a CIDR range with zero host bits ({exc}); write "
                          "e.g. 192.0.2.0/24 or 192.0.2.7/32") from None


def _is_mac(text: str) -> bool:
    parts = text.replace("-", ":").split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                   for p in parts)


def _ipv4(text: str) -> None:
    if text:
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ConfigError(f"{text!r} is not an IPv4 address") from None


Positive = Annotated[Float, positive()]
NonNegative = Annotated[Float, rule(lambda v: v >= 0, "must be >= 0, got {v}")]


@dataclass(frozen=True)
class AgentSettings(Section):
    """What one probe agent does and how carefully.

    Safety: ``allowlist`` (CIDRs; empty refuses everything), ``exclude_file`` (opt-out CIDRs, re-read
    when it changes; always wins), ``skip_tracked`` (sweeps skip IPs tracked in ``scanflow.ip-state``),
    ``rate_pps`` (packets/s cap of the whole agent) and ``per_target_pps`` (politeness cap per
    address), ``contact`` (sent as the HTTP/RTSP User-Agent; publish the scan's purpose behind it),
    ``max_range_addresses`` (bigger ranges are refused), ``interface`` (bind probes to one interface).
    """

    section_name = "agent"

    backend: Annotated[str, one_of(*BACKEND_NAMES)] = "sim"
    agent_id: str = ""
    group_id: str = "scanflow-agents"

    allowlist: Annotated[Strs, checked(lambda entries: [_network(e) for e in entries])] = ()
    exclude_file: Annotated[str, existing_file("create it (it may be empty) or leave the setting empty")] = ""
    skip_tracked: bool = True
    rate_pps: Positive = 1000.0
    per_target_pps: Positive = 20.0
    burst_s: Positive = 0.05
    max_range_addresses: Annotated[Int, between(1, 1 << 32)] = 1 << 24
    contact: Annotated[str, rule(lambda v: v and len(v) <= 256 and v.isprintable() and v.isascii(),
                                 "give a printable ASCII string of 1..256 characters naming the operator "
                                 "and where the scan's purpose is published")] = DEFAULT_CONTACT
    interface: str = ""

    concurrency: Annotated[Int, between(1, 100_000)] = 256
    connect_timeout_s: Positive = 3.0
    read_timeout_s: Positive = 5.0
    passive_wait_s: NonNegative = 2.0
    idle_gap_s: Positive = 0.3
    banner_cap: Annotated[Int, between(1, MAX_BANNER_CAP)] = MAX_BANNER_CAP
    ask_unknown: bool = True
    syn_retries: Annotated[Int, between(1, 10)] = 1

    shards: Annotated[Int, between(1, 1 << 16)] = 1
    shard: Int = 0
    seed: Int = 0
    portset_dir: Annotated[str, rule(lambda v: not v or resolve_path(v).is_dir(),
                                     "{v} is not a directory of published port sets (JSON files written "
                                     "by PortSet.write)")] = ""
    max_inflight_commands: Annotated[Int, between(1, 100_000)] = 32
    commit_interval_s: Positive = 1.0
    stop_grace_s: NonNegative = 5.0
    #: The agent starts its own process again (same arguments) when its command loop has not turned
    #: for this long: a Kafka client call that never returns (probe_agent/watchdog.py). Above every
    #: bounded wait of the loop (a flush waits up to the producer's 120 s delivery timeout); 0 = off.
    stuck_restart_s: NonNegative = 300.0

    metrics_port: Annotated[Int, between(0, 65535)] = 0
    metrics_host: str = "127.0.0.1"
    log_format: Annotated[str, rule(lambda v: v in ("text", "json"), "{v!r} is not text or json")] = "text"
    progress: Annotated[str, rule(lambda v: v in ("auto", "on", "off"), "{v!r} is not auto, on or off")] = "auto"

    masscan_path: str = "masscan"
    masscan_interface: str = ""
    masscan_router_mac: Annotated[str, rule(lambda v: not v or _is_mac(v),
                                            "{v!r} is not a MAC address like 02:00:00:00:00:01")] = ""
    masscan_adapter_ip: Annotated[str, checked(_ipv4)] = ""
    masscan_wait_s: Positive = 2.0
    masscan_retries: Annotated[Int, between(0, 10)] = 0

    sim_seed: Int = 0
    sim_n_ips: Annotated[Int, between(1, 1 << 24)] = 65536
    sim_horizon_days: Positive = 56.0
    sim_epoch_us: Int = 0
    sim_loss: Annotated[Float, rule(lambda v: v <= 1, "{v} is above 1; give a probability, or -1 for the "
                                                      "world's own loss")] = -1.0
    #: World seconds per agent second: > 1 runs the world's devices (churn, outages) faster, as
    #: ``scanflow run`` does when it compresses a virtual day into a few wall seconds.
    sim_time_scale: Positive = 1.0

    def check(self) -> None:
        if self.per_target_pps > self.rate_pps:
            raise ConfigError(f"agent.per_target_pps: {self.per_target_pps} exceeds agent.rate_pps "
                              f"{self.rate_pps}; the politeness cap must not exceed the agent's cap")
        if not 0 <= self.shard < self.shards:
            raise ConfigError(f"agent.shard: {self.shard} must be in 0..{self.shards - 1} (agent.shards "
                              f"is {self.shards}); shards are numbered from 0")
        if self.backend in ("connect", "masscan") and self.contact == DEFAULT_CONTACT:
            outside = [n for n in self.allowed_networks() if not any(
                n.version == t.version and n.subnet_of(t) for t in TEST_NETWORKS)]
            if outside:
                raise ConfigError(f"agent.contact: the allowlist reaches beyond the test networks "
                                  f"({outside[0]}); set a contact string that names the operator and "
                                  "the page that publishes the scan's purpose and opt-out address")

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The allowlist as parsed networks (validated entries only)."""
        return [_network(entry, "agent.allowlist: ") for entry in self.allowlist]

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
