"""Replay a recorded scan through a policy, bounded, on the FnApiRunner; and the counterfactual replay.

    recorded events (a Kafka topic range, or the lake) -> per IP: its scan rounds, in time order
        -> the chosen policy's decide() on each round it would have made -> tallies, decisions
        -> Table-4 comparison (scanflow.metrics.compare: the one definition of PDR, DDR, traffic and
           attempts, with its honeypot exclusion) + an evaluation lake (optional)

**Counterfactual replay.** From a recorded *standard* scan (every IP, every 12 h, the standard set),
the efficient policy is evaluated seeing only the (IP, port, round) cells it would have probed:

- it first probes an IP at round ``phase(ip)`` of that IP's recorded rounds (``phase`` spreads the
  first sweep over one silent interval, like the live sweeps and the simulator: a stable hash of the
  address unless given);
- when ``decide`` plans the next scan at time T, the next round it sees is the first recorded round at
  or after T (within ``tolerance_s``, for the jitter of real scans);
- in that round it sees the recorded open ports and banners on the ports of its plan only, and the
  round's completeness. Same responses, same timing: only the policy differs.

What a counterfactual cannot see: ports of a plan that the recorded scan did not probe (outside the
standard set) read as closed, and are counted as ``unobserved_probes``. IPs that never answered and
whose rounds all completed are handled in bulk (their efficient cost is the policy's silent sweep,
read from the policy by :func:`scanflow.simulate.bulk_silent_rule`), as the live sweeps do; no
decisions are written for them.

Both sides' traffic is modelled with the same :class:`scanflow.metrics.ByteModel`, so the ratio
compares policies, not agents.

The output lake (``out_lake``) holds both sides of the comparison: a ScanDone per round of each side
(bytes from the byte model), the recording's answered rounds and every replayed round as
observations, and the replayed policy's decisions; replayed rounds carry the recorded scan_id with
``~<policy>`` appended. ``scanflow report --lake OUT`` is then the evaluation's report (Table 1,
Table 4, Figures 6 and 7) and agrees with the comparison printed by the replay.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from scanflow.lifecycle.rounds import resolve_port_set
from scanflow.metrics import HONEYPOT_MIN_PORTS, ByteModel, PolicyTally, compare, exclusion_line
from scanflow.policy import Observation
from scanflow.portsets import PortSet

US = 1_000_000
_METRICS = "scanflow.replay"


class RecordedRound(NamedTuple):
    """One IP's recorded scan round: when it ended (seconds), what answered, what was probed."""

    at: float
    scan_id: str
    policy: str
    open_ports: frozenset[int]
    banners: tuple[tuple[int, bytes], ...]
    probed: PortSet | None
    ports_probed: int
    complete: bool
    agent_id: str = ""


# ------------------------------------------------------------------------------------------------
# Pure replay of one IP


@dataclass
class IpReplay:
    """What replaying one IP gave: both tallies, the efficient side's records, the blind spots."""

    standard: PolicyTally
    replayed: PolicyTally
    decisions: list[dict] = field(default_factory=list)
    observations: list[dict] = field(default_factory=list)
    scans: list[dict] = field(default_factory=list)
    unobserved_probes: int = 0
    recorded_bytes: int = 0
    events: int = 0


def stable_phase(ip: str, rounds: int) -> int:
    """The round (0..rounds-1) of an IP's first sweep: a stable hash of the address."""
    if rounds <= 1:
        return 0
    return int.from_bytes(hashlib.blake2b(ip.encode(), digest_size=8).digest(), "big") % rounds


def _record_of(ps: PortSet) -> dict:
    if ps.name is not None or len(ps) <= 64:
        return ps.to_record()
    return {"name": None, "version": None, "ports": []}  # an oversized anonymous set: not recordable inline


def replay_ip(ip: str, rounds: list[RecordedRound], policy, *, counterfactual: bool = True, phase: int = 0,
              tolerance_s: float = 3600.0, byte_model: ByteModel = ByteModel(), silent_rule=None,
              records: bool = True) -> IpReplay:
    """Replay one IP's recorded rounds (sorted by time) through ``policy`` (see the module docstring).

    Without ``counterfactual`` the policy decides on every recorded round as recorded (its
    decisions on the same history); the replayed tally is then the recording itself.
    """
    out = IpReplay(PolicyTally(byte_model), PolicyTally(byte_model))
    for r in rounds:
        probes = r.ports_probed or (len(r.probed) if r.probed else 0)
        out.standard.add_round(ip, probes, r.open_ports, [(p, len(b)) for p, b in r.banners])
        if records:  # the recording itself, so the output lake holds both sides of the comparison
            out.scans.append(_scan_record(ip, r, r.policy, r.scan_id, probes, r.probed, r.open_ports, r.banners,
                                          byte_model))
            if r.open_ports:
                out.observations.append(_observation_record(
                    ip, r, Observation(r.open_ports, r.banners, r.probed, r.complete), r.policy, r.probed, r.scan_id))
    if not rounds:
        return out
    tag = f"~{policy.name.lower()}"
    answered = any(r.open_ports for r in rounds)
    times = [r.at for r in rounds]
    if counterfactual and silent_rule is not None and not answered and all(r.complete for r in rounds):
        # never answered, every round complete: the policy's silent sweep, in bulk (what decide()
        # would plan after each silent round, as checked by bulk_silent_rule)
        interval = silent_rule.rounds * policy.params.standard_interval
        i = phase
        while i < len(rounds):
            ports = silent_rule.first if i == phase else silent_rule.sweep
            out.replayed.add_round(ip, len(ports))
            if records:
                r = rounds[i]
                out.scans.append(_scan_record(ip, r, policy.name, r.scan_id + tag, len(ports), ports, frozenset(), (),
                                              byte_model))
            i = max(bisect.bisect_left(times, times[i] + interval - tolerance_s, lo=i + 1), i + 1)
        return out
    state = None
    if counterfactual:
        if phase >= len(rounds):
            return out
        state, plan = policy.start(rounds[phase].at)
        i = phase
    else:
        plan, i = None, 0
    while i < len(rounds):
        r = rounds[i]
        if counterfactual:
            ports = plan.ports
            seen = r.open_ports & ports.ports
            banners = tuple((p, b) for p, b in r.banners if p in ports.ports)
            if r.probed is not None:
                out.unobserved_probes += len(ports.ports - r.probed.ports)
            obs = Observation(frozenset(seen), banners, ports, r.complete)
            out.replayed.add_round(ip, len(ports), seen, [(p, len(b)) for p, b in banners])
        else:
            ports = r.probed
            obs = Observation(r.open_ports, r.banners, r.probed, r.complete)
            out.replayed.add_round(ip, r.ports_probed, r.open_ports, [(p, len(b)) for p, b in r.banners])
        previous = state
        state, plan = policy.decide(state, obs, r.at)
        if records:
            sid = r.scan_id + tag
            out.observations.append(_observation_record(ip, r, obs, policy.name, ports, sid))
            out.decisions.append(_decision_record(ip, r, previous, state, plan, policy.name, sid))
            out.scans.append(_scan_record(ip, r, policy.name, sid, len(ports) if ports is not None else r.ports_probed,
                                          ports, obs.open_ports, obs.banners, byte_model))
        if counterfactual:
            nxt = bisect.bisect_left(times, plan.at - tolerance_s, lo=i + 1)
            i = max(nxt, i + 1)
        else:
            i += 1
    return out


def _scan_record(ip: str, r: RecordedRound, policy: str, scan_id: str, probes: int, ports: PortSet | None,
                 open_ports: frozenset[int], banners, byte_model: ByteModel) -> dict:
    """A ScanDone for one round of one side, its bytes from the byte model (as the tallies)."""
    grabbed = [(p, len(b)) for p, b in banners]
    sent = byte_model.round_bytes(probes, len(open_ports - {p for p, _ in grabbed}), grabbed)
    return {"scan_id": scan_id, "agent_id": r.agent_id, "command_id": None, "target": ip, "policy": policy,
            "started_at": int(r.at * US), "ended_at": int(r.at * US),
            "port_set": _record_of(ports) if ports is not None else {"name": None, "version": None, "ports": []},
            "ports_probed": probes, "addresses_probed": 1, "packets_sent": probes, "bytes_sent": sent,
            "responses": len(open_ports), "status": "COMPLETE" if r.complete else "ABORTED", "status_detail": None}


def _observation_record(ip: str, r: RecordedRound, obs: Observation, policy: str, ports: PortSet | None,
                        scan_id: str) -> dict:
    from scanflow.fingerprint import answer_fingerprint

    banners = dict(obs.banners)
    return {"ip": ip, "scan_id": scan_id, "agent_id": r.agent_id, "command_id": None, "policy": policy,
            "started_at": int(r.at * US), "ended_at": int(r.at * US),
            "port_set": _record_of(ports) if ports is not None else {"name": None, "version": None, "ports": []},
            "ports_probed": len(ports) if ports is not None else 0,
            "responses": [{"port": p, "transport": "TCP", "banner": banners.get(p), "banner_protocol": None,
                           "ttl": None, "window": None} for p in sorted(obs.open_ports)],
            "status": "COMPLETE" if r.complete else "ABORTED",
            "fingerprint": answer_fingerprint(obs.open_ports, obs.banners) if obs.open_ports else None,
            "device": None}


def _decision_record(ip: str, r: RecordedRound, previous, state, plan, policy: str, scan_id: str) -> dict:
    decided = int(r.at * US)
    material = "\x1f".join((ip, policy, str(decided), scan_id)).encode()
    return {"decision_id": hashlib.blake2b(material, digest_size=16).hexdigest(), "ip": ip, "policy": policy,
            "decided_at": decided, "scan_id": scan_id,
            "previous_status": previous.status.value if previous is not None else "UNKNOWN",
            "status": state.status.value, "changed": bool(plan.changed), "device": state.device,
            "backoff_step": int(state.step), "reason": plan.reason.value, "next_scan_at": int(plan.at * US),
            "port_set": _record_of(plan.ports), "command_id": None}


def assemble_rounds(items: Iterable[tuple], published: Mapping[tuple[str, int], PortSet],
                    ranges: Iterable[tuple] = ()) -> tuple[list[RecordedRound], int]:
    """One IP's rounds from its compact events ``(0, scan_id, port, banner, ts_us)`` and ScanDones
    ``(1, scan_id, ended_us, status, port_set_ref, ports_probed, policy, agent_id)``, plus the range
    ScanDones covering it (same shape). A round is one scan_id; its time is the ScanDone's end (the
    last response when the ScanDone is missing: an incomplete round). Returns (rounds, events)."""
    events: dict[str, dict[int, bytes | None]] = {}
    last_ts: dict[str, int] = {}
    dones: dict[str, tuple] = {}
    n_events = 0
    for item in items:
        if item[0] == 0:
            _, sid, port, banner, ts = item
            n_events += 1
            ports = events.setdefault(sid, {})
            if ports.get(port) is None:
                ports[port] = banner
            last_ts[sid] = max(last_ts.get(sid, ts), ts)
        else:
            dones[item[1]] = item
    for item in ranges:
        dones.setdefault(item[1], item)
    out = []
    for sid in set(events) | set(dones):
        ports = events.get(sid, {})
        done = dones.get(sid)
        if done is not None:
            _, _, ended, status, ref, probed, policy, agent = done
            at, complete = ended / US, status == "COMPLETE"
            port_set = resolve_port_set(ref, published)
        else:
            at, complete, port_set, probed, policy, agent = last_ts[sid] / US, False, None, 0, "UNKNOWN", ""
        out.append(RecordedRound(at, sid, policy, frozenset(ports),
                                 tuple(sorted((p, b) for p, b in ports.items() if b is not None)),
                                 port_set, probed, complete, agent))
    out.sort(key=lambda r: (r.at, r.scan_id))
    return out, n_events


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
        from scanflow.simulate import bulk_silent_rule

        self._published = {(ps.name, ps.version): ps for ps in _published_sets(self._policy) if ps.name is not None}
        self._rule = bulk_silent_rule(self._policy, self._policy.params.standard_interval) \
            if self._spec.counterfactual and hasattr(self._policy, "estimator") else None
        self._events = Metrics.counter(_METRICS, "events")
        self._ips = Metrics.counter(_METRICS, "ips")

    def process(self, element, ranges=None):
        ip, groups = element
        items = [item for group in groups for item in (group if isinstance(group, list) else (group,))]
        covering = _covering(ip, ranges) if ranges else ()
        rounds, n_events = assemble_rounds(items, self._published, covering)
        rounds = [r for r in rounds if r.policy == self._spec.source_policy]
        phase = self._spec.phases.get(ip) if self._spec.phases else None
        silent_rounds = self._rule.rounds if self._rule is not None else 1
        result = replay_ip(ip, rounds, self._policy, counterfactual=self._spec.counterfactual,
                           phase=stable_phase(ip, silent_rounds) if phase is None else phase,
                           tolerance_s=self._spec.tolerance_s, silent_rule=self._rule, records=self._records)
        self._events.inc(n_events)
        self._ips.inc()
        for d in result.decisions:
            yield beam.pvalue.TaggedOutput("decisions", d)
        for o in result.observations:
            yield beam.pvalue.TaggedOutput("observations", o)
        for d in result.scans:
            yield beam.pvalue.TaggedOutput("scans", d)
        yield _Totals.of(result, n_events)


def _published_sets(policy) -> list[PortSet]:
    sets = policy.port_sets
    return [sets.standard, sets.silent, sets.unknown]


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


def world_standard_records(world, schedule, standard: PortSet, *, rounds: int | None = None,
                           byte_model: ByteModel = ByteModel.ip_layer()):
    """A standard scan of a synthetic world (:mod:`scanflow.world`) as the sim backend records it:
    ``(schema, record)`` pairs, every address in every round at its scheduled instant (the
    simulator's :class:`scanflow.simulate.Schedule`), the standard set, a ScanEvent per open port
    (and one per banner), then one ScanDone per address. Virtual time 0 is
    :data:`scanflow.world.banners.EPOCH_UNIX`."""
    import numpy as np

    from connectors.avro_codec import make_event_id
    from scanflow.simulate import SCANNER_STANDARD
    from scanflow.world.banners import EPOCH_UNIX, NO_BANNER
    from scanflow.world.model import PortMasks

    masks = PortMasks()
    mid = masks.id_for("standard", standard.ports)
    prof = world.profiles
    ips = np.arange(world.n_ips, dtype=np.int64)
    addresses = [world.address(int(i)) for i in ips]
    port_set = standard.to_record()
    for k in range(schedule.n_slots if rounds is None else rounds):
        times = schedule.times(k, ips, efficient=False)
        seg = world.segment_at(ips, times)
        row, entry = world.answers(seg, masks.matrix, np.full(len(ips), mid), times, SCANNER_STANDARD)
        sent = {}
        for r, e in zip(row.tolist(), entry.tolist()):
            ip, port, t = addresses[r], int(prof.port[e]), int(times[r])
            sid, ts = f"std-{k}-{r}", (EPOCH_UNIX + t) * US
            base = {"scan_id": sid, "agent_id": "sim", "ip": ip, "port": port, "transport": "TCP", "timestamp": ts,
                    "banner_truncated": False, "banner_protocol": None, "ttl": None, "window": None}
            yield "ScanEvent", {**base, "event_id": make_event_id(sid, ip, port, "TCP", "SYN_ACK"), "kind": "SYN_ACK",
                                "banner": None}
            banner = world.banner(int(seg[r]), int(e), t) if prof.choice[e] != NO_BANNER else None
            if banner is not None:
                yield "ScanEvent", {**base, "event_id": make_event_id(sid, ip, port, "TCP", "BANNER"), "kind": "BANNER",
                                    "banner": banner[:4096], "banner_truncated": len(banner) > 4096}
            sent[r] = sent.get(r, 0) + byte_model.rst
        probe_bytes = len(standard) * byte_model.syn
        for r in range(len(ips)):
            ts = (EPOCH_UNIX + int(times[r])) * US
            yield "ScanDone", {"scan_id": f"std-{k}-{r}", "agent_id": "sim", "command_id": None, "target": addresses[r],
                               "policy": "STANDARD", "started_at": ts, "ended_at": ts, "port_set": port_set,
                               "ports_probed": len(standard), "addresses_probed": 1, "packets_sent": len(standard),
                               "bytes_sent": probe_bytes + sent.get(r, 0), "responses": 0, "status": "COMPLETE",
                               "status_detail": None}
