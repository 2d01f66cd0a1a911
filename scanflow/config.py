"""One typed configuration for every scanflow command.

Precedence, lowest first: built-in defaults < TOML file < environment < CLI flags.

- TOML file: ``--config PATH``, else ``$SCANFLOW_CONFIG``, else ``./scanflow.toml`` if it exists.
  Sections are the fields of :class:`Settings` (``[kafka]``, ``[infra]``, ...).
- Environment: ``SCANFLOW_<SECTION>_<KEY>``, e.g. ``SCANFLOW_KAFKA_BOOTSTRAP_SERVERS``.
- CLI: ``--set section.key=value`` (repeatable) and the few dedicated flags of each command.

Everything is validated once at start; a bad key or value raises :class:`ConfigError` whose message
names the key, what was wrong and how to fix it. Sections are frozen dataclasses so a loaded
configuration can be passed around (and pickled into Beam workers) without being changed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from scanflow import __version__

#: The source checkout: defaults for infra scripts, caches and local state are relative to it.
REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "SCANFLOW_"


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message says the fix."""


class KafkaNotReady(RuntimeError):
    """A command cannot start: no broker answers, or a topic it needs does not exist. The message is
    one line naming the fix; commands exit with :attr:`exit_code` (docs/OPERATIONS.md)."""

    exit_code = 4


#: The local broker's client port when nothing else is configured (``infra.kafka_port``).
DEFAULT_KAFKA_PORT = 9092
#: Where the local broker started by ``scanflow infra up`` listens (infra/kafka/kafka.sh).
LOCAL_KAFKA_HOST = "127.0.0.1"


@dataclass(frozen=True)
class KafkaSettings:
    """How clients reach Kafka: the local broker by default, or an existing cluster.

    ``bootstrap_servers`` empty (the default) means the local broker of ``scanflow infra up``,
    ``127.0.0.1:<infra.kafka_port>``: :class:`Settings` fills it in, so the broker's port and every
    client's address come from the one setting ``infra.kafka_port``. Set it to use another cluster.
    """

    bootstrap_servers: str = ""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    client_id: str = "scanflow"
    request_timeout_ms: int = 30_000

    def validate(self) -> None:
        protocols = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
        if self.security_protocol not in protocols:
            raise ConfigError(f"kafka.security_protocol: {self.security_protocol!r} is not one of "
                              f"{', '.join(protocols)}")
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ConfigError("kafka.sasl_mechanism: required with a SASL security_protocol; "
                              "set it to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        for server in self.bootstrap_servers.split(",") if self.bootstrap_servers else ():
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"kafka.bootstrap_servers: {server!r} is not HOST:PORT; "
                                  "write e.g. 127.0.0.1:9092 (comma-separated for several)")
        _positive("kafka.request_timeout_ms", self.request_timeout_ms)

    def servers(self) -> list[str]:
        """The bootstrap ``HOST:PORT`` list (empty setting outside :class:`Settings`: the local
        broker on its default port)."""
        text = self.bootstrap_servers or f"{LOCAL_KAFKA_HOST}:{DEFAULT_KAFKA_PORT}"
        return [s.strip() for s in text.split(",") if s.strip()]

    def local_ports(self) -> list[int]:
        """Ports of the bootstrap entries on this machine's loopback (where a local broker is)."""
        ports = []
        for server in self.servers():
            host, _, port = server.rpartition(":")
            host = host.strip("[]").lower()
            if host == "localhost" or host == "::1" or host.startswith("127."):
                ports.append(int(port))
        return ports

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients (producer, consumer, admin)."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.servers(),
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism:
            opts.update(sasl_mechanism=self.sasl_mechanism,
                        sasl_plain_username=self.sasl_username,
                        sasl_plain_password=self.sasl_password)
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, key):
                opts[key] = getattr(self, key)
        return opts


@dataclass(frozen=True)
class InfraSettings:
    """The local stack started by ``scanflow infra``: one Kafka broker, cached builds, state."""

    kafka_port: int = DEFAULT_KAFKA_PORT
    kafka_controller_port: int = 9093
    kafka_heap: str = "1g"
    state_dir: str = ".scanflow"
    status_timeout_s: float = 60.0

    def validate(self) -> None:
        for key in ("kafka_port", "kafka_controller_port"):
            port = getattr(self, key)
            if not 1024 <= port < 65536:
                raise ConfigError(f"infra.{key}: {port} is outside 1024..65535; pick a free port")
        if self.kafka_port == self.kafka_controller_port:
            raise ConfigError("infra.kafka_controller_port: must differ from infra.kafka_port")
        _positive("infra.status_timeout_s", self.status_timeout_s)

    def state_path(self) -> Path:
        return resolve_path(self.state_dir)

    def local_bootstrap(self) -> str:
        """Where clients reach the local broker: ``127.0.0.1:<kafka_port>``."""
        return f"{LOCAL_KAFKA_HOST}:{self.kafka_port}"

    def script_env(self) -> dict[str, str]:
        """Environment for infra/kafka/kafka.sh: the same names as this section's env overrides."""
        return {
            "SCANFLOW_INFRA_KAFKA_PORT": str(self.kafka_port),
            "SCANFLOW_INFRA_KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
            "SCANFLOW_INFRA_KAFKA_HEAP": self.kafka_heap,
            "SCANFLOW_INFRA_STATE_DIR": str(self.state_path()),
            "SCANFLOW_INFRA_STATUS_TIMEOUT_S": str(self.status_timeout_s),
        }


@dataclass(frozen=True)
class TopicsSettings:
    """Topic names and the declarative topic list applied by ``scanflow topics create``."""

    file: str = "infra/topics.toml"
    events: str = "scanflow.events"
    commands: str = "scanflow.commands"
    ip_state: str = "scanflow.ip-state"
    dead_letter: str = "scanflow.dead-letter"

    def validate(self) -> None:
        for key in ("events", "commands", "ip_state", "dead_letter"):
            name = getattr(self, key)
            if not name or len(name) > 249 or not all(c.isalnum() or c in "._-" for c in name):
                raise ConfigError(f"topics.{key}: {name!r} is not a valid Kafka topic name "
                                  "(1-249 characters of letters, digits, '.', '_', '-')")


@dataclass(frozen=True)
class BeamSettings:
    """Which Beam runner the pipelines use and where its parts are."""

    runner: str = "prism"
    prism_location: str = "infra/.cache/prism/prism"
    flink_master: str = "[local]"
    flink_job_server_jar: str = ""
    environment_type: str = "LOOPBACK"

    def validate(self) -> None:
        runners = ("prism", "flink", "fnapi", "dataflow")
        if self.runner not in runners:
            raise ConfigError(f"beam.runner: {self.runner!r} is not one of {', '.join(runners)}")


@dataclass(frozen=True)
class PolicySettings:
    """The scanning policy's tunables (defaults: the paper's) and extra knowledge-base files."""

    kb_files: tuple[str, ...] = ()
    builtin_kb: bool = True
    min_confidence: float = 0.5
    ladder_hours: tuple[float, ...] = (12, 24, 48, 72, 120, 168, 336, 720)
    silent_interval_h: float = 84.0
    standard_interval_h: float = 12.0
    retry_interval_h: float = 12.0
    demote_after: int = 1
    initial_scan: str = "standard"
    recall_interval_h: float = 0.0
    recall_for_h: float = 168.0

    def validate(self) -> None:
        if not 0 < self.min_confidence <= 1:
            raise ConfigError(f"policy.min_confidence: must be in (0, 1], got {self.min_confidence}")
        if not self.ladder_hours or any(h <= 0 for h in self.ladder_hours):
            raise ConfigError("policy.ladder_hours: give positive hours, e.g. [12, 24, 48, 72, 120, 168, 336, 720]")
        if any(b < a for a, b in zip(self.ladder_hours, self.ladder_hours[1:])):
            raise ConfigError(f"policy.ladder_hours: must not decrease, got {list(self.ladder_hours)}")
        for key in ("silent_interval_h", "standard_interval_h", "retry_interval_h"):
            _positive(f"policy.{key}", getattr(self, key))
        if self.demote_after < 1:
            raise ConfigError(f"policy.demote_after: must be >= 1 silent round, got {self.demote_after}")
        if self.initial_scan not in ("standard", "silent"):
            raise ConfigError(f"policy.initial_scan: {self.initial_scan!r} is not one of standard, silent "
                              "(standard: the paper's first scan with the standard set)")
        if self.recall_interval_h < 0:
            raise ConfigError(f"policy.recall_interval_h: must be >= 0 (0 = off), got {self.recall_interval_h}")
        _positive("policy.recall_for_h", self.recall_for_h)
        for path in self.kb_files:
            if not resolve_path(path).is_file():
                raise ConfigError(f"policy.kb_files: {path} does not exist; list existing knowledge-base TOML files")

    def kb_paths(self) -> tuple[Path, ...]:
        return tuple(resolve_path(p) for p in self.kb_files)


LAKE_COMPRESSIONS = ("zstd", "snappy", "gzip", "none")


@dataclass(frozen=True)
class LakeSettings:
    """Where the Parquet lake is and how its files are cut (see the module docstring)."""

    root: str = ".scanflow/lake"
    target_file_mb: float = 128.0
    flush_interval_s: float = 300.0
    compression: str = "zstd"
    row_group_rows: int = 131_072
    max_open_files: int = 64

    def validate(self) -> None:
        """Raise :class:`scanflow.config.ConfigError` naming the key and the fix."""
        if not self.root.strip():
            raise ConfigError("lake.root: empty; give a directory, e.g. .scanflow/lake")
        if not 0.01 <= self.target_file_mb <= 4096:
            raise ConfigError(f"lake.target_file_mb: {self.target_file_mb} is outside 0.01..4096; "
                              "64-512 MB suits DuckDB")
        if self.flush_interval_s <= 0:
            raise ConfigError(f"lake.flush_interval_s: must be > 0 seconds, got {self.flush_interval_s}")
        if self.compression not in LAKE_COMPRESSIONS:
            raise ConfigError(f"lake.compression: {self.compression!r} is not one of {', '.join(LAKE_COMPRESSIONS)}")
        if not 1024 <= self.row_group_rows <= 16_777_216:
            raise ConfigError(f"lake.row_group_rows: {self.row_group_rows} is outside 1024..16777216")
        if not 1 <= self.max_open_files <= 4096:
            raise ConfigError(f"lake.max_open_files: {self.max_open_files} is outside 1..4096")

    def root_path(self) -> Path:
        """The lake root as an absolute path."""
        return resolve_path(self.root)

    @property
    def target_file_bytes(self) -> int:
        """:attr:`target_file_mb` in bytes."""
        return int(self.target_file_mb * 1024 * 1024)


_PIPELINE_HOUR = 3600.0


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
    - ``archive_dir``: where the Parquet archive of observations and decisions goes (empty: off);
    - ``catch_up``: live only: a next scan whose command would already be expired by the wall clock
      (its time + ``command_ttl_s`` has passed: the scheduler was down, or a state came back from
      long ago) is moved to now, so an IP gets one command after an outage, not one expired command
      (and one refused round) per missed cycle;
    - ``sweep_gather_s``: an address that answers a sweep (a range scan) is promoted this long after
      its last answer, whenever in the sweep it comes (the sweep's own end is not waited for);
    - ``first_pass``: live only: the scheduler begins by scanning every sweep block with the policy's
      initial (classification) port set, all within ``first_pass_window_s`` of its start (0: all at
      once; the agents' rate caps pace them), then sweeps each block once per period after that
      (``scanflow run`` turns it on: a run starts from nothing). Off: the blocks' sweeps are spread
      over the period, so a block may wait up to 3.5 days for its first scan.
    """

    sweep_ranges: tuple[str, ...] = ()
    sweep_prefix: int = 24
    sweep_tick_s: float = 60.0
    round_timeout_s: float = 1 * _PIPELINE_HOUR
    command_ttl_s: float = 6 * _PIPELINE_HOUR
    dedupe_horizon_s: float = 24 * _PIPELINE_HOUR
    recent_scans: int = 4
    rewind_s: float = 2 * _PIPELINE_HOUR
    silent_set: str = ""
    unknown_set: str = ""
    standard_set: str = ""
    group_id: str = "scanflow-scheduler"
    watermark_lag_s: float = 5.0
    archive_dir: str = ""
    catch_up: bool = True
    first_pass: bool = False
    first_pass_window_s: float = 0.0
    sweep_gather_s: float = 10 * 60.0

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
                    "rewind_s", "watermark_lag_s", "sweep_gather_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"pipeline.{key}: must be > 0 seconds, got {getattr(self, key)}")
        if self.first_pass_window_s < 0:
            raise ConfigError(f"pipeline.first_pass_window_s: must be >= 0 seconds (0: every block at the "
                              f"start), got {self.first_pass_window_s}")
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
    stop_grace_s: float = 5.0

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
    #: World seconds per agent second: > 1 runs the world's devices (churn, outages) faster, as
    #: ``scanflow run`` does when it compresses a virtual day into a few wall seconds.
    sim_time_scale: float = 1.0

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
                    "idle_gap_s", "commit_interval_s", "masscan_wait_s", "sim_horizon_days",
                    "sim_time_scale"):
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
        names = sorted((f.name for f in dataclasses.fields(self)), key=lambda name: name != "infra")
        for name in names:
            getattr(self, name).validate()
        return self


def resolve_path(value: str | os.PathLike[str]) -> Path:
    """A configured path: absolute as given, relative ones against the source checkout."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def _coerce(key: str, raw: Any, target: Any) -> Any:
    """Convert a TOML or string value to the field's declared type, or say what is expected."""
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        target = next(a for a in typing.get_args(target) if a is not type(None))
    if target is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if target is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected a whole number, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a whole number, got {raw!r}") from None
    if target is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected a number, got {raw!r}")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
    if target is str:
        if isinstance(raw, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {type(raw).__name__}")
        return str(raw)
    if origin in (list, tuple):
        if isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {raw!r}")
        (item_type, *_) = typing.get_args(target) or (str,)
        return tuple(_coerce(key, item, item_type) for item in raw)
    raise ConfigError(f"{key}: unsupported setting type {target!r}")


def _apply(section_values: dict[str, dict[str, Any]], section: str, key: str, raw: Any,
           source: str) -> None:
    sections = _sections()
    if section not in sections:
        raise ConfigError(f"{source}: unknown section {section!r}; known sections: "
                          f"{', '.join(sorted(sections))}")
    hints = typing.get_type_hints(sections[section])
    if key not in hints:
        raise ConfigError(f"{source}: unknown key {section}.{key}; known keys of [{section}]: "
                          f"{', '.join(sorted(hints))}")
    section_values.setdefault(section, {})[key] = _coerce(f"{section}.{key}", raw, hints[key])


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

    sections = _sections()
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "SCANFLOW_CONFIG":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            _apply(values, section, key, raw, f"environment variable {name}")

    for dotted, raw in (overrides or {}).items():
        section, sep, key = dotted.partition(".")
        if not sep:
            raise ConfigError(f"--set {dotted}: write section.key=value, e.g. kafka.bootstrap_servers=host:9092")
        _apply(values, section, key, raw, f"--set {dotted}")

    built = {name: cls(**values.get(name, {})) for name, cls in sections.items()}
    settings = Settings(**built).validate()
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
