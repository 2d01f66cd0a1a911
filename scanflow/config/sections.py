"""The sections of the configuration but ``[agent]``: Kafka, the local stack, topics, Beam, the
policy, the lake and the scheduler pipeline. Each field's type and rules are its declaration
(:mod:`scanflow.config.model`); rules between fields are in ``check``."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from scanflow.config.errors import ConfigError
from scanflow.config.model import (Float, Floats, Int, Section, Strs, between, checked, existing_file, one_of,
                                   positive, resolve_path, rule)

#: The local broker's client port when nothing else is configured (``infra.kafka_port``).
DEFAULT_KAFKA_PORT = 9092
#: Where the local broker started by ``scanflow infra up`` listens (infra/kafka/kafka.sh).
LOCAL_KAFKA_HOST = "127.0.0.1"

Positive = Annotated[Float, positive()]
Seconds = Annotated[Float, positive(" seconds")]
Port = Annotated[Int, between(1024, 65535, "pick a free port")]


def _host_ports(text: str) -> None:
    for server in text.split(",") if text else ():
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{server!r} is not HOST:PORT; write e.g. 127.0.0.1:9092 "
                              "(comma-separated for several)")


@dataclass(frozen=True)
class KafkaSettings(Section):
    """How clients reach Kafka: the local broker by default, or an existing cluster.

    ``bootstrap_servers`` empty (the default) means the local broker of ``scanflow infra up``,
    ``127.0.0.1:<infra.kafka_port>``: :class:`Settings` fills it in, so the broker's port and every
    client's address come from the one setting ``infra.kafka_port``. Set it to use another cluster.
    """

    section_name = "kafka"

    bootstrap_servers: Annotated[str, checked(_host_ports)] = ""
    security_protocol: Annotated[str, one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")] = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    client_id: str = "scanflow"
    request_timeout_ms: Annotated[Int, positive()] = 30_000

    def check(self) -> None:
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ConfigError("kafka.sasl_mechanism: required with a SASL security_protocol; "
                              "set it to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")

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


def _listen_host(text: str) -> None:
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an IPv4 address; write e.g. 127.0.0.1 (or an address of this "
                          "machine that other clients reach)") from None
    if ip.is_unspecified:
        raise ConfigError("0.0.0.0 cannot be advertised to clients; name one address of this machine")


@dataclass(frozen=True)
class InfraSettings(Section):
    """The local stack started by ``scanflow infra``: one Kafka broker (or a replicated cluster of
    ``kafka_brokers`` nodes), cached builds, state."""

    section_name = "infra"

    kafka_port: Port = DEFAULT_KAFKA_PORT
    #: The address of this machine the client listener(s) bind and advertise (controllers stay on
    #: 127.0.0.1); clients derive their bootstrap list from it.
    kafka_host: Annotated[str, checked(_listen_host)] = LOCAL_KAFKA_HOST
    kafka_controller_port: Port = 9093
    #: 1 = one broker; 3 or more = a cluster, node i on ``kafka_port + 2(i-1)`` (infra/kafka/kafka.sh).
    kafka_brokers: Annotated[Int, between(1, 9)] = 1
    kafka_heap: str = "1g"
    state_dir: str = ".scanflow"
    status_timeout_s: Positive = 60.0

    def check(self) -> None:
        if self.kafka_port == self.kafka_controller_port:
            raise ConfigError("infra.kafka_controller_port: must differ from infra.kafka_port")
        if self.kafka_brokers == 2:
            raise ConfigError("infra.kafka_brokers: 2 nodes cannot lose one (a 2-voter quorum needs both); "
                              "use 1, or 3 or more")
        if self.kafka_brokers > 1:
            clients = {self.kafka_port + 2 * i for i in range(self.kafka_brokers)}
            controllers = {self.kafka_controller_port + 2 * i for i in range(self.kafka_brokers)}
            if clients & controllers:
                raise ConfigError("infra.kafka_controller_port: the cluster's node ports overlap (node i uses "
                                  "kafka_port + 2(i-1) and kafka_controller_port + 2(i-1)); make the two "
                                  "differ by an odd number")

    def state_path(self) -> Path:
        return resolve_path(self.state_dir)

    def local_bootstrap(self) -> str:
        """Where clients reach the local broker: ``<kafka_host>:<kafka_port>`` (127.0.0.1 by default);
        for a cluster, every node's client port, comma-separated."""
        return ",".join(f"{self.kafka_host}:{self.kafka_port + 2 * i}" for i in range(self.kafka_brokers))

    def script_env(self) -> dict[str, str]:
        """Environment for infra/kafka/kafka.sh: the same names as this section's env overrides."""
        return {
            "SCANFLOW_INFRA_KAFKA_PORT": str(self.kafka_port),
            "SCANFLOW_INFRA_KAFKA_HOST": self.kafka_host,
            "SCANFLOW_INFRA_KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
            "SCANFLOW_INFRA_KAFKA_BROKERS": str(self.kafka_brokers),
            "SCANFLOW_INFRA_KAFKA_HEAP": self.kafka_heap,
            "SCANFLOW_INFRA_STATE_DIR": str(self.state_path()),
            "SCANFLOW_INFRA_STATUS_TIMEOUT_S": str(self.status_timeout_s),
        }


TopicName = Annotated[str, rule(lambda v: v and len(v) <= 249 and all(c.isalnum() or c in "._-" for c in v),
                                "{v!r} is not a valid Kafka topic name "
                                "(1-249 characters of letters, digits, '.', '_', '-')")]


@dataclass(frozen=True)
class TopicsSettings(Section):
    """Topic names and the declarative topic list applied by ``scanflow topics create``."""

    section_name = "topics"

    file: str = "infra/topics.toml"
    events: TopicName = "scanflow.events"
    commands: TopicName = "scanflow.commands"
    ip_state: TopicName = "scanflow.ip-state"
    dead_letter: TopicName = "scanflow.dead-letter"
    kb_updates: TopicName = "scanflow.kb-updates"


@dataclass(frozen=True)
class BeamSettings(Section):
    """Which Beam runner the pipelines use and where its parts are."""

    section_name = "beam"

    runner: Annotated[str, one_of("prism", "flink", "fnapi", "dataflow")] = "prism"
    prism_location: str = "infra/.cache/prism/prism"
    flink_master: str = "[local]"
    flink_job_server_jar: str = ""
    environment_type: str = "LOOPBACK"


def _ladder(hours: tuple[float, ...]) -> None:
    if not hours or any(h <= 0 for h in hours):
        raise ConfigError("give positive hours, e.g. [12, 24, 48, 72, 120, 168, 336, 720]")
    if any(b < a for a, b in zip(hours, hours[1:])):
        raise ConfigError(f"must not decrease, got {list(hours)}")


def _kb_files(paths: tuple[str, ...]) -> None:
    for path in paths:
        if not resolve_path(path).is_file():
            raise ConfigError(f"{path} does not exist; list existing knowledge-base TOML files")


#: The efficient policies ``[policy] name`` can choose (``scanflow.adaptive.POLICIES``; kept here as
#: text so the configuration does not import the policy core).
POLICY_NAMES = ("adaptive", "paper")


@dataclass(frozen=True)
class PolicySettings(Section):
    """Which efficient policy runs and its tunables, and extra knowledge-base files.

    ``name``: ``adaptive`` (default: light sweeps every ``cadence_h``, a follow-up ``followup_delay_s``
    after anything new, remembered devices; see :mod:`scanflow.adaptive`) or ``paper`` (the paper's
    method, :class:`scanflow.policy.EfficientPolicy`). Both use the ladder, standard and retry
    intervals; ``silent_interval_h`` is the paper's sweep period and the adaptive policy's sweep
    period of quiet prefixes; ``initial_scan = "auto"`` is each policy's own first probe.
    ``cadence_h``, ``followup_delay_s``, ``memory_for_h``, ``exploited_cap_h``, ``light_target``,
    ``light_ports`` and ``moves`` are the adaptive policy's only (:class:`scanflow.adaptive.AdaptiveParams`).
    """

    section_name = "policy"

    name: Annotated[str, one_of(*POLICY_NAMES, note="(adaptive: the default; paper: the paper's method); "
                                                    "set policy.name or pass --policy")] = "adaptive"
    kb_files: Annotated[Strs, checked(_kb_files)] = ()
    builtin_kb: bool = True
    min_confidence: Annotated[Float, rule(lambda v: 0 < v <= 1, "must be in (0, 1], got {v}")] = 0.5
    ladder_hours: Annotated[Floats, checked(_ladder)] = (12, 24, 48, 72, 120, 168, 336, 720)
    silent_interval_h: Positive = 84.0
    standard_interval_h: Positive = 12.0
    retry_interval_h: Positive = 12.0
    demote_after: Annotated[Int, rule(lambda v: v >= 1, "must be >= 1 silent round, got {v}")] = 1
    #: The first probe of an address; auto: the policy's own (the paper's: the standard set; the
    #: adaptive policy's: the paper's silent set, its answers followed up at once).
    initial_scan: Annotated[str, one_of("auto", "standard", "silent", note="(auto: the policy's own; standard: "
                                                                           "the paper's first scan with the "
                                                                           "standard set)")] = "auto"
    recall_interval_h: Annotated[Float, rule(lambda v: v >= 0, "must be >= 0 (0 = off), got {v}")] = 0.0
    recall_for_h: Positive = 168.0
    cadence_h: Positive = 12.0
    followup_delay_s: Annotated[Float, rule(lambda v: v >= 0, "must be >= 0 seconds, got {v}")] = 300.0
    memory_for_h: Positive = 720.0
    #: Back-off cap of models that actively exploited malware infects (the knowledge base's ``active``).
    exploited_cap_h: Positive = 72.0
    light_target: Annotated[Float, rule(lambda v: 0 < v <= 1, "must be in (0, 1], got {v}")] = 0.93
    light_ports: Annotated[Int, rule(lambda v: v >= 0, "must be >= 0 (0: cut by light_target), got {v}")] = 0
    #: Devices that move: a new answer matching exactly one device another address of its /24
    #: remembers resumes that device's estimate and back-off step (the stages then key by /24).
    moves: bool = False
    #: Quiet /24 prefixes of the adaptive sweeps (``SweepCadence.to_dict`` JSON); empty: none known yet.
    cadence_file: Annotated[str, existing_file("give a sweep cadence file (JSON of SweepCadence.to_dict) "
                                               "or leave it empty")] = ""

    def check(self) -> None:
        if self.followup_delay_s >= self.cadence_h * 3600:
            raise ConfigError(f"policy.followup_delay_s: {self.followup_delay_s:g} s is not shorter than "
                              f"policy.cadence_h ({self.cadence_h:g} h); a follow-up comes before the next "
                              "light probe: lower followup_delay_s")

    def kb_paths(self) -> tuple[Path, ...]:
        return tuple(resolve_path(p) for p in self.kb_files)


LAKE_COMPRESSIONS = ("zstd", "snappy", "gzip", "none")


@dataclass(frozen=True)
class LakeSettings(Section):
    """Where the Parquet lake is and how its files are cut (see :mod:`connectors.lake_settings`)."""

    section_name = "lake"

    root: Annotated[str, rule(str.strip, "empty; give a directory, e.g. .scanflow/lake")] = ".scanflow/lake"
    target_file_mb: Annotated[Float, between(0.01, 4096, "64-512 MB suits DuckDB")] = 128.0
    flush_interval_s: Seconds = 300.0
    compression: Annotated[str, one_of(*LAKE_COMPRESSIONS)] = "zstd"
    row_group_rows: Annotated[Int, between(1024, 16_777_216)] = 131_072
    max_open_files: Annotated[Int, between(1, 4096)] = 64

    def root_path(self) -> Path:
        """The lake root as an absolute path."""
        return resolve_path(self.root)

    @property
    def target_file_bytes(self) -> int:
        """:attr:`target_file_mb` in bytes."""
        return int(self.target_file_mb * 1024 * 1024)


_PIPELINE_HOUR = 3600.0


def _sweep_ranges(ranges: tuple[str, ...]) -> None:
    for text in ranges:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise ConfigError(f"{text!r} is not a CIDR range with zero host bits; "
                              "write e.g. 192.0.2.0/24") from None
        if net.version != 4:
            raise ConfigError(f"{text} is IPv6; sweeps cover IPv4 ranges only")


_PARTITIONS = re.compile(r"^\s*(all|\d+\s*/\s*\d+|\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*)?\s*$")


def _partitions(text: str) -> None:
    """The form of ``pipeline.partitions``; partition numbers are checked against the events topic
    when the scheduler starts (``pipelines.partitions.parse_share``)."""
    if not _PARTITIONS.match(text):
        raise ConfigError(f"{text!r} is not a partition group; use i/n (job i of n, 0 <= i < n), or a list "
                          "such as 0,2 or 0-3, or leave it empty for every partition")


PortSetFile = Annotated[str, existing_file("give a port-set file written by PortSet.write, or leave it "
                                           "empty for the provisional set")]


@dataclass(frozen=True)
class PipelineSettings(Section):
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
    - ``ranking_file``: the response ranking the sets were cut from (``ranking.json`` written by
      ``scanflow portsets derive``), which the adaptive policy cuts its light set from; empty: the
      ``ranking.json`` beside ``standard_set``;
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
    - ``partitions``: live only: the share of the work this scheduler job owns when several jobs run
      side by side on Prism (one core each): ``i/n`` (job i of n: the events partitions p with
      p % n == i) or a list (``0,2`` / ``0-3``) of events partitions. The job reads only those
      partitions, restores and rescans only the addresses keyed to them and sweeps only the blocks
      keyed to them (:mod:`pipelines.partitions`). Empty (default): everything, one job. Not needed
      on Flink or Dataflow, which spread the keyed stages themselves.
    """

    section_name = "pipeline"

    sweep_ranges: Annotated[Strs, checked(_sweep_ranges)] = ()
    sweep_prefix: Annotated[Int, between(8, 32, "use e.g. 24 for range commands of 256 addresses")] = 24
    sweep_tick_s: Seconds = 60.0
    round_timeout_s: Seconds = 1 * _PIPELINE_HOUR
    command_ttl_s: Seconds = 6 * _PIPELINE_HOUR
    dedupe_horizon_s: Seconds = 24 * _PIPELINE_HOUR
    recent_scans: Annotated[Int, between(1, 16)] = 4
    rewind_s: Seconds = 2 * _PIPELINE_HOUR
    silent_set: PortSetFile = ""
    unknown_set: PortSetFile = ""
    standard_set: PortSetFile = ""
    ranking_file: Annotated[str, existing_file("give the ranking.json written by `scanflow portsets derive` "
                                               "or leave it empty (ranking.json beside standard_set)")] = ""
    group_id: Annotated[str, rule(bool, "give the consumer group of the scheduler, e.g. scanflow-scheduler")] = \
        "scanflow-scheduler"
    watermark_lag_s: Seconds = 5.0
    archive_dir: str = ""
    catch_up: bool = True
    first_pass: bool = False
    first_pass_window_s: Annotated[Float, rule(lambda v: v >= 0, "must be >= 0 seconds (0: every block at the "
                                                                 "start), got {v}")] = 0.0
    sweep_gather_s: Seconds = 10 * 60.0
    partitions: Annotated[str, checked(_partitions)] = ""

    def check(self) -> None:
        for text, net in zip(self.sweep_ranges, self.sweep_networks()):
            if net.prefixlen > self.sweep_prefix:
                raise ConfigError(f"pipeline.sweep_ranges: {text} is smaller than one sweep block "
                                  f"(/{self.sweep_prefix}); raise pipeline.sweep_prefix to "
                                  f"{net.prefixlen} or widen the range")
        if self.rewind_s < self.round_timeout_s:
            raise ConfigError(f"pipeline.rewind_s: {self.rewind_s} s is shorter than "
                              f"pipeline.round_timeout_s ({self.round_timeout_s} s): a round open at a "
                              "restart would be lost; raise rewind_s")

    def sweep_networks(self) -> tuple[ipaddress.IPv4Network, ...]:
        """The configured sweep ranges, parsed."""
        return tuple(ipaddress.IPv4Network(text) for text in self.sweep_ranges)
