"""Replay a recorded scan through a policy, bounded, on the FnApiRunner (the per-IP replay itself,
counterfactual or not, is :mod:`pipelines.counterfactual`).

    recorded events (a Kafka topic range, or the lake) -> per IP: its scan rounds, in time order
        -> the per-IP lifecycle (scanflow.lifecycle.step.Lifecycle.observe) on each round the
           policy would have made -> tallies, decisions
        -> Table-4 comparison (scanflow.metrics.compare: the one definition of PDR, DDR, traffic and
           attempts, with its honeypot exclusion) + an evaluation lake (optional)

Both sides' traffic is modelled with the same :class:`scanflow.metrics.ByteModel`, so the ratio
compares policies, not agents.

The output lake (``out_lake``) holds both sides of the comparison: a ScanDone per round of each side
(bytes from the byte model), the recording's answered rounds and every replayed round as
observations, and the replayed policy's decisions; replayed rounds carry the recorded scan_id with
``~<policy>`` appended. ``scanflow report --lake OUT`` is then the evaluation's report (Table 1,
Table 4, Figures 6 and 7) and agrees with the comparison printed by the replay.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.counterfactual import IpReplay, assemble_rounds, replay_group, stable_phase
from scanflow.lifecycle.rounds import US
from scanflow.lifecycle.step import Lifecycle, moves_of, prefix_of
from scanflow.metrics import HONEYPOT_MIN_PORTS, PolicyTally, compare, exclusion_line

_METRICS = "scanflow.replay"


# ------------------------------------------------------------------------------------------------
# Beam


class _DecodeAndKey(beam.DoFn):
    """Kafka record -> (ip, [compact events and ScanDones]); range ScanDones to the ``ranges``
    output; anything that does not decode to the ``dead_letter`` output.

    Items are gathered per IP within a bundle (up to ``_BUFFER`` items) before the shuffle: one
    element per IP and bundle instead of one per record, which is most of the grouping cost.
    """

    _BUFFER = 50_000

    def __init__(self, window_us: tuple[int | None, int | None]):
        self._window = window_us

    def setup(self):
        from connectors.avro_codec import default_codec

        self._codec = default_codec()
        self._dead = Metrics.counter(_METRICS, "dead_letters")

    def start_bundle(self):
        self._by_ip: dict[str, list] = {}
        self._held = 0

    def process(self, rec):
        from connectors.avro_codec import CodecError
        from connectors.beam_kafka_common import DeadLetter
        from connectors.kafka_io import dead_letter_headers

        try:
            schema, r = self._codec.decode(rec.value, ("ScanEvent", "ScanDone"))
        except CodecError as exc:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput("dead_letter", DeadLetter(rec.key, rec.value, rec.headers + dead_letter_headers(
                exc.error_class, str(exc), rec.topic, rec.partition, rec.offset, rec.timestamp_ms)))
            return
        for out in compact_record(schema, r, self._window):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield out
                continue
            self._by_ip.setdefault(out[0], []).append(out[1])
            self._held += 1
        if self._held >= self._BUFFER:
            yield from self._by_ip.items()
            self._by_ip, self._held = {}, 0

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        for pair in self._by_ip.items():
            yield WindowedValue(pair, GlobalWindow().max_timestamp(), [GlobalWindow()])
        self._by_ip, self._held = {}, 0


def compact_record(schema: str, r: Mapping[str, Any], window: tuple[int | None, int | None] = (None, None)):
    """A decoded ScanEvent/ScanDone as ``(ip, compact tuple)`` (or ``TaggedOutput('ranges', ...)``
    for a range ScanDone), dropped when outside the ``window`` (microseconds, end exclusive)."""
    lo, hi = window
    if schema == "ScanEvent":
        ts = r["timestamp"]
        if (lo is not None and ts < lo) or (hi is not None and ts >= hi) or r.get("transport") not in ("TCP", "UNKNOWN"):
            return
        yield r["ip"], (0, r["scan_id"], r["port"], r.get("banner") if r.get("kind") == "BANNER" else None, ts)
        return
    ended = r["ended_at"]
    if (lo is not None and ended < lo) or (hi is not None and ended >= hi):
        return
    ps = r.get("port_set") or {}
    ref = None if ps.get("name") is None and not ps.get("ports") else (ps.get("name"), ps.get("version"),
                                                                          tuple(ps.get("ports") or ()))
    item = (1, r["scan_id"], ended, r.get("status") or "UNKNOWN", ref, int(r.get("ports_probed") or 0),
            r.get("policy") or "UNKNOWN", r.get("agent_id") or "")
    if "/" in r["target"]:
        yield beam.pvalue.TaggedOutput("ranges", (r["target"], item))
    else:
        yield r["target"], item


class _ReplayIps(beam.DoFn):
    """(ip, compact items) -> per-IP :class:`IpReplay` parts: tallies (main), decisions and
    observations (tagged), for the recorded policy's rounds only."""

    def __init__(self, spec: "ReplaySpec", policy, records: bool):
        self._spec, self._policy, self._records = spec, policy, records

    def setup(self):
        from scanflow.lifecycle.rounds import published_sets
        from scanflow.lifecycle.untracked import bulk_silent_rule, first_probe_rounds

        self._published = published_sets(self._policy)
        self._rule = bulk_silent_rule(self._policy, self._policy.params.standard_interval) \
            if self._spec.counterfactual and hasattr(self._policy, "estimator") else None
        # first probes are spread as the simulator spreads them: over one sweep interval when they
        # are sweeps, all in the first round when they are a classification scan
        self._first_rounds = first_probe_rounds(self._rule) if self._rule is not None else 1
        self._lifecycle = Lifecycle(self._policy)
        self._events = Metrics.counter(_METRICS, "events")
        self._ips = Metrics.counter(_METRICS, "ips")

    def process(self, element, ranges=None):
        key, groups = element
        items = [item for group in groups for item in (group if isinstance(group, list) else (group,))]
        # keyed by address, or by /24 with devices that move (then each item carries its address)
        by_ip = {key: items} if not self._lifecycle.moves else _by_address(items)
        replays, events = [], {}
        for ip, its in by_ip.items():
            covering = _covering(ip, ranges) if ranges else ()
            rounds, events[ip] = assemble_rounds(its, self._published, covering)
            rounds = [r for r in rounds if r.policy == self._spec.source_policy]
            phase = self._spec.phases.get(ip) if self._spec.phases else None
            replays.append((ip, rounds, stable_phase(ip, self._first_rounds) if phase is None else phase))
        results = replay_group(replays, self._policy, counterfactual=self._spec.counterfactual,
                               tolerance_s=self._spec.tolerance_s, silent_rule=self._rule, records=self._records,
                               lifecycle=self._lifecycle)
        for ip, result in results.items():
            self._events.inc(events[ip])
            self._ips.inc()
            for d in result.decisions:
                yield beam.pvalue.TaggedOutput("decisions", d)
            for o in result.observations:
                yield beam.pvalue.TaggedOutput("observations", o)
            for d in result.scans:
                yield beam.pvalue.TaggedOutput("scans", d)
            yield _Totals.of(result, events[ip])


def _by_address(items) -> dict[str, list]:
    """``(ip, item)`` pairs of a /24 by address."""
    out: dict[str, list] = {}
    for ip, item in items:
        if isinstance(item, list):           # a batch of the address's items
            out.setdefault(ip, []).extend(item)
        else:
            out.setdefault(ip, []).append(item)
    return out


def _covering(ip: str, ranges: Mapping[str, list]) -> list:
    """Range ScanDones whose /24 (IPv4) covers ``ip``; ``ranges`` is keyed by the /24's first three
    octets."""
    import ipaddress

    key = ip.rsplit(".", 1)[0]
    out = []
    for target, item in ranges.get(key, ()):
        if ipaddress.ip_address(ip) in ipaddress.ip_network(target):
            out.append(item)
    return out


def _index_ranges(pairs: Iterable[tuple[str, tuple]]) -> dict[str, list]:
    import ipaddress

    index: dict[str, list] = {}
    for target, item in pairs:
        net = ipaddress.ip_network(target)
        if net.version != 4 or net.prefixlen < 16:
            continue  # only IPv4 ranges down to /16 are expanded (at most 256 /24 keys each)
        for sub in (net.subnets(new_prefix=24) if net.prefixlen < 24 else [net]):
            index.setdefault(str(sub.network_address).rsplit(".", 1)[0], []).append((target, item))
    return index


@dataclass
class _Totals:
    """Additive partial results; cells kept per side so PDR and DDR come from scanflow.metrics."""

    standard: PolicyTally
    replayed: PolicyTally
    unobserved_probes: int = 0
    events: int = 0
    ips: int = 0

    @classmethod
    def of(cls, r: IpReplay, events: int) -> "_Totals":
        return cls(r.standard, r.replayed, r.unobserved_probes, events, 1)

    def merge(self, other: "_Totals") -> "_Totals":
        for mine, theirs in ((self.standard, other.standard), (self.replayed, other.replayed)):
            mine.cells |= theirs.cells
            mine.attempts += theirs.attempts
            mine.probes += theirs.probes
            mine.modelled_bytes += theirs.modelled_bytes
            mine.measured_bytes += theirs.measured_bytes
            mine.measured_rounds += theirs.measured_rounds
        self.unobserved_probes += other.unobserved_probes
        self.events += other.events
        self.ips += other.ips
        return self


class _MergeTotals(beam.CombineFn):
    def create_accumulator(self):
        return _Totals(PolicyTally(), PolicyTally())

    def add_input(self, acc, value):
        return acc.merge(value)

    def merge_accumulators(self, accs):
        accs = iter(accs)
        first = next(accs)
        for acc in accs:
            first.merge(acc)
        return first

    def extract_output(self, acc):
        return acc


# ------------------------------------------------------------------------------------------------
# Running a replay


@dataclass(frozen=True)
class ReplaySpec:
    """What to replay and how: the policy, counterfactual or not, the recorded policy, the range."""

    policy: str = "EFFICIENT"
    counterfactual: bool = True
    source_policy: str = "STANDARD"
    start: Any = None
    end: Any = None
    topic: str | None = None
    start_offsets: Mapping[tuple[str, int], int] | None = None
    stop_offsets: Mapping[tuple[str, int], int] | None = None
    tolerance_s: float = 3600.0
    phases: Mapping[str, int] | None = None

    def window_us(self) -> tuple[int | None, int | None]:
        """The time range in microseconds (end exclusive)."""
        from connectors.duckdb_sql import as_time

        lo, hi = as_time(self.start), as_time(self.end)
        return (None if lo is None else int(lo.timestamp() * US), None if hi is None else int(hi.timestamp() * US))


@dataclass(frozen=True)
class ReplayResult:
    """The comparison of the replayed policy with the recording (Table-4 style)."""

    policy: str
    counterfactual: bool
    pdr: float
    ddr: float
    traffic_ratio: float
    attempts_ratio: float
    standard_bytes: int
    replayed_bytes: int
    standard_attempts: int
    replayed_attempts: int
    standard_probes: int
    replayed_probes: int
    standard_cells: int
    replayed_cells: int
    unobserved_probes: int
    events: int
    ips: int
    honeypot_min_ports: int = HONEYPOT_MIN_PORTS
    excluded_ips: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)

    def lines(self) -> list[str]:
        """A Table-4-style summary."""
        kind = "counterfactual" if self.counterfactual else "replay"
        return [f"{kind}: {self.policy.lower()} policy over the recorded scan ({self.ips:,} IPs, {self.events:,} events)",
                f"port detection rate    {self.pdr:8.2%}  ({self.replayed_cells:,} of {self.standard_cells:,} cells)",
                f"device detection rate  {self.ddr:8.2%}",
                f"traffic                {self.traffic_ratio:8.2%}  ({self.replayed_bytes:,} / {self.standard_bytes:,} bytes, "
                "same byte model)",
                f"scan attempts          {self.attempts_ratio:8.2%}  ({self.replayed_attempts:,} / {self.standard_attempts:,})",
                f"probes                 {self.replayed_probes:,} / {self.standard_probes:,}; "
                f"{self.unobserved_probes:,} probes of ports the recording never probed read as closed",
                exclusion_line(self.honeypot_min_ports, self.excluded_ips)]

    @classmethod
    def of(cls, policy: str, counterfactual: bool, t: _Totals,
           honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> "ReplayResult":
        """The comparison by :func:`scanflow.metrics.compare`; the cell counts are those PDR and DDR
        are counted over (after the honeypot exclusion)."""
        c = compare(t.standard, t.replayed, honeypot_min_ports=honeypot_min_ports)
        return cls(policy, counterfactual, c.pdr, c.ddr, c.traffic_ratio, c.attempts_ratio, c.standard_bytes,
                   c.efficient_bytes, c.standard_attempts, c.efficient_attempts, t.standard.probes,
                   t.replayed.probes, c.standard_cells, c.efficient_cells, t.unobserved_probes,
                   t.events, t.ips, c.honeypot_min_ports, c.excluded_ips)


class ReplayRecorded(beam.PTransform):
    """``(ip, compact item)`` pairs (+ range ScanDones) -> a PCollection with one merged :class:`_Totals`;
    the evaluation lake (scans, observations, decisions of both sides) is written to ``out_lake``
    when given."""

    def __init__(self, spec: ReplaySpec, policy, out_lake: str | None = None):
        super().__init__()
        self._spec, self._policy, self._out = spec, policy, out_lake

    def expand(self, inputs):
        keyed, ranges = inputs
        index = ranges | "IndexRanges" >> beam.combiners.ToList() | "ByBlock" >> beam.Map(_index_ranges)
        if moves_of(self._policy):
            # devices that move: the addresses of a /24 are replayed together, in time order
            keyed = keyed | "ByPrefix" >> beam.Map(lambda kv: (prefix_of(kv[0]), [kv]))
        replayed = (keyed
                    | "GroupByIp" >> beam.GroupByKey()
                    | "ReplayIps" >> beam.ParDo(_ReplayIps(self._spec, self._policy, self._out is not None),
                                                ranges=beam.pvalue.AsSingleton(index))
                    .with_outputs("decisions", "observations", "scans", main="totals"))
        if self._out is not None:
            from connectors.beam_lake import WriteToLake

            _ = replayed.decisions | "WriteDecisions" >> WriteToLake(self._out, "decisions")
            _ = replayed.observations | "WriteObservations" >> WriteToLake(self._out, "observations")
            _ = replayed.scans | "WriteScans" >> WriteToLake(self._out, "scans")
        return replayed.totals | "Merge" >> beam.CombineGlobally(_MergeTotals())


class _LakeFiles(beam.DoFn):
    """A lake file path -> ``(ip, compact item)`` of its ScanEvents/ScanDones (the lake as a recording)."""

    def __init__(self, window_us):
        self._window = window_us

    def process(self, element):
        import pyarrow.parquet as pq

        from connectors.parquet_lake import arrow_to_records

        table, path = element
        schema = "ScanEvent" if table == "events" else "ScanDone"
        for r in arrow_to_records(pq.read_table(path)):
            if schema == "ScanDone":
                r["port_set"] = {"name": r.pop("port_set_name"), "version": r.pop("port_set_version"),
                                 "ports": r.pop("port_set_ports")}
            yield from compact_record(schema, r, self._window)


def build_replay(pipeline: beam.Pipeline, settings, spec: ReplaySpec, policy, *, lake: str | None = None,
                 out_lake: str | None = None):
    """Add the replay to ``pipeline``: from ``spec.topic`` (a bounded range of the events topic) or
    from the lake's events and scans. Returns the PCollection of the merged totals."""
    window = spec.window_us()
    if spec.topic:
        from connectors.beam_kafka_sink import WriteToKafka
        from connectors.beam_kafka_source import ReadFromKafka

        read = ReadFromKafka(settings.kafka, spec.topic, start="earliest",
                             stop=None if spec.stop_offsets else "end",
                             start_offsets=spec.start_offsets, stop_offsets=spec.stop_offsets)
        decoded = (pipeline | "ReadRecorded" >> read
                   | "DecodeAndKey" >> beam.ParDo(_DecodeAndKey(window)).with_outputs("ranges", "dead_letter",
                                                                                      main="keyed"))
        _ = decoded.dead_letter | "DeadLetters" >> WriteToKafka(settings.kafka, settings.topics.dead_letter)
    else:
        from connectors.parquet_lake import table_files

        if lake is None:
            raise ValueError("replay: give a topic or a lake to read the recording from")
        paths = [("events", str(p)) for p in table_files(lake, "events")] + \
                [("scans", str(p)) for p in table_files(lake, "scans")]
        if not paths:
            raise ValueError(f"replay: the lake at {lake} has no events or scans; archive the events topic first "
                             "(scanflow lake archive) or pass --topic")
        decoded = (pipeline | "LakeFiles" >> beam.Create(paths) | "Reshuffle" >> beam.Reshuffle()
                   | "ReadLake" >> beam.ParDo(_LakeFiles(window)).with_outputs("ranges", main="keyed"))
    return (decoded.keyed, decoded.ranges) | "Replay" >> ReplayRecorded(spec, policy, out_lake)


def default_policy(settings, name: str, port_sets=None):
    """The policy to replay: ``EFFICIENT`` or ``STANDARD`` from the ``[policy]`` settings and the
    given port sets (:class:`scanflow.policy.PolicyPortSets`)."""
    from scanflow.estimate import Estimator
    from scanflow.knowledge import load_knowledge
    from scanflow.policy import EfficientPolicy, StandardPolicy, params_from_settings

    if port_sets is None:
        raise ValueError("replay: give the port sets the policy uses (--port-sets DIR with standard.json, "
                         "silent.json and unknown.json, as written by scanflow.portsets.PortSet.write)")
    ps = settings.policy
    params = params_from_settings(ps)
    if name == "STANDARD":
        return StandardPolicy(port_sets, params)
    kb = load_knowledge(ps.kb_paths(), builtin=ps.builtin_kb)
    return EfficientPolicy(port_sets, Estimator(kb, min_confidence=ps.min_confidence), params)


def run_replay(settings, spec: ReplaySpec, *, policy=None, port_sets=None, lake: str | None = None,
               out_lake: str | None = None, runner: str = "fnapi", extra_args: list[str] | None = None,
               honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> ReplayResult:
    """Run a replay on the bounded runner and return the comparison (PDR and DDR without the IPs the
    recording found with ``honeypot_min_ports`` or more open ports; ``None`` or 0: every IP)."""
    from pipelines.runners import pipeline_options

    policy = policy or default_policy(settings, spec.policy, port_sets)
    with tempfile.TemporaryDirectory(prefix="scanflow-replay-") as tmp:
        result_path = Path(tmp) / "result.json"
        pipeline = beam.Pipeline(options=pipeline_options(settings, streaming=False, runner=runner, extra=extra_args))
        totals = build_replay(pipeline, settings, spec, policy, lake=lake, out_lake=out_lake)
        _ = totals | "Result" >> beam.Map(_write_result, str(result_path), policy.name, spec.counterfactual,
                                          honeypot_min_ports)
        pipeline.run().wait_until_finish()
        return ReplayResult(**json.loads(result_path.read_text()))


def _write_result(totals: _Totals, path: str, policy: str, counterfactual: bool,
                  honeypot_min_ports: int | None = HONEYPOT_MIN_PORTS) -> None:
    Path(path).write_text(json.dumps(ReplayResult.of(policy, counterfactual, totals, honeypot_min_ports).as_dict()))
