"""The simulator's history as the event contract's records: what the efficient scan observed.

:func:`scanflow.simulate.run_policy` calls a recorder's ``scan``, ``bulk`` and ``decision`` as it runs;
this one turns them into ``ScanEvent`` / ``ScanDone`` records (Avro-ready dicts, built with
:func:`connectors.avro_codec.make_record`) and ``Decision``-shaped dicts, so the scheduler pipeline can
be fed the simulator's history and checked decision by decision (tests/unit/pipelines/test_pipeline_sim_replay.py).
The I/O side of the simulator lives here so the core stays free of the record layer.

:func:`world_standard_records` records a world's *standard* scan the same way (what
``scanflow lake record-sim`` writes and the counterfactual replay reads).
"""

from __future__ import annotations

import ipaddress

import numpy as np

from connectors.avro_codec import make_record
from scanflow.metrics import ByteModel
from scanflow.portsets import PortSet
from scanflow.world.banners import EPOCH_UNIX, PROTOCOLS
from scanflow.world.model import BASE_ADDRESS, World


class EventRecorder:
    """What :func:`run_policy` observed, as the event contract's records, and what it decided, in the
    shape of the scheduler pipeline's ``Decision`` records (opt-in: ``run_policy(..., events=...)``).

    Records are built with :func:`connectors.avro_codec.make_record`; nothing is written anywhere:
    ``records`` and :meth:`stream` are plain lists for a test, a replay or a producer to use.

    Times: the simulator's seconds since the world's epoch become microseconds since the Unix epoch,
    ``epoch + t`` (default: the world's epoch, 2019-12-02, the date its banners show). The policy
    only adds intervals to ``now``, so a pipeline deciding at ``epoch + t`` decides what the
    simulator decided at ``t``; the recorded decisions carry the shifted times.

    What is recorded, per round ``k``:

    - every per-IP round that goes through ``decide`` (a tracked IP's scan, or an untracked IP that
      answered: in the first classification scan or in a bulk sweep): one ``ScanEvent`` per open
      probed port at the probe instant (``BANNER`` with the banner when the service spoke, else
      ``SYN_ACK``), and one ``ScanDone`` with the address as target, the probed port set, status
      ``COMPLETE``, started and ended at the probe instant (the simulator's probes are
      instantaneous; its decision is made at that instant, and a pipeline decides at the end of the
      round). Scan id ``sim-<k>-<address>``; a follow-up probe the policy planned within the round
      (the adaptive policy's, minutes after an answer) is a scan of its own at its own instant,
      ``sim-<k>-<address>-followup``.
    - the addresses probed in bulk that stayed silent (the first classification scan, then the
      silent sweeps): one range ``ScanDone`` per ``/block_prefix`` block and round with no
      ``ScanEvent``, over the instants of its probes (``addresses_probed`` = how many). Like the
      pipeline's sweeps it closes no per-IP round: a silent address has no per-IP state and no
      decision in either. Scan id ``sim-<k>-<first|sweep>-<block>``.
    - ``decisions``: one dict per ``decide`` with the ``Decision`` fields ``ip``, ``policy``,
      ``decided_at``, ``scan_id``, ``previous_status`` (``UNKNOWN`` when the IP had no per-IP
      state, i.e. it was handled in bulk: the simulator keeps a demoted IP's last state, the pipeline
      a tombstone), ``status``, ``changed``, ``device``, ``backoff_step``, ``reason``,
      ``next_scan_at`` (None when the IP goes back to the bulk sweeps) and ``port_set``.
    """

    def __init__(self, *, epoch: float = EPOCH_UNIX, block_prefix: int = 24, agent_id: str = "sim"):
        if not 0 < block_prefix <= 32:
            raise ValueError(f"block_prefix must be in 1..32, got {block_prefix}")
        self._make = make_record
        self.epoch = float(epoch)
        self.block_prefix = block_prefix
        self.agent_id = agent_id
        self.records: list[tuple[str, dict]] = []
        self.decisions: list[dict] = []
        self._syn_bytes = ByteModel.ip_layer().syn
        self._round = -1
        self._scanned: set[int] = set()          # addresses scanned in round ``_round``
        self._last: tuple[int, int, int, str] | None = None  # (k, ip, t, scan id) of the last scan

    def _scan_id(self, k: int, ip: int, address: str) -> str:
        """``sim-<k>-<address>``; a second scan of the address in round ``k`` is its follow-up."""
        if k != self._round:
            self._round, self._scanned = k, set()
        if ip in self._scanned:
            return f"sim-{k}-{address}-followup"
        self._scanned.add(ip)
        return f"sim-{k}-{address}"

    def micros(self, t: float) -> int:
        """Simulator seconds -> microseconds since the Unix epoch."""
        return int(round((self.epoch + float(t)) * 1_000_000))

    def scan(self, world: World, k: int, ip: int, t: int, entries: np.ndarray, banners: dict[int, bytes],
             probed: PortSet, policy: str) -> str:
        """One per-IP scan: its responses (profile ``entries`` that answered, ``banners`` by port, the
        bytes the simulator observed) and its ScanDone. Returns the scan id."""
        prof = world.profiles
        address = world.address(ip)
        scan_id = self._scan_id(k, ip, address)
        self._last = (k, ip, t, scan_id)
        ts = self.micros(t)
        for e in sorted(entries.tolist(), key=lambda e: int(prof.port[e])):
            port = int(prof.port[e])
            banner = banners.get(port)
            if banner is None:
                fields = dict(kind="SYN_ACK")
            else:
                proto = PROTOCOLS[int(prof.proto[e])]
                fields = dict(kind="BANNER", banner=banner, banner_protocol=None if proto == "raw" else proto)
            self.records.append(("ScanEvent", self._make(
                "ScanEvent", scan_id=scan_id, agent_id=self.agent_id, ip=address, port=port, transport="TCP",
                timestamp=ts, **fields)))
        self.records.append(("ScanDone", self._done(scan_id, address, policy, ts, ts, probed, 1, len(entries))))
        return scan_id

    def bulk(self, k: int, ips: np.ndarray, times: np.ndarray, probed: PortSet, label: str, policy: str) -> None:
        """Addresses probed in bulk in round ``k`` that stayed silent: one range ScanDone per block."""
        if not len(ips):
            return
        shift = 32 - self.block_prefix
        blocks = (BASE_ADDRESS + np.asarray(ips, dtype=np.int64)) >> shift
        order = np.argsort(blocks, kind="stable")
        blocks, times = blocks[order], np.asarray(times)[order]
        cuts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1], True])
        for a, b in zip(cuts[:-1], cuts[1:]):
            net = f"{ipaddress.IPv4Address(int(blocks[a]) << shift)}/{self.block_prefix}"
            self.records.append(("ScanDone", self._done(
                f"sim-{k}-{label}-{net}", net, policy, self.micros(int(times[a:b].min())),
                self.micros(int(times[a:b].max())), probed, int(b - a), 0)))

    def _done(self, scan_id: str, target: str, policy: str, started: int, ended: int, probed: PortSet,
              addresses: int, responses: int) -> dict:
        n = len(probed)
        return self._make("ScanDone", scan_id=scan_id, agent_id=self.agent_id, command_id=None, target=target,
                          policy=policy, started_at=started, ended_at=ended, port_set=probed.to_record(),
                          ports_probed=n, addresses_probed=addresses, packets_sent=n * addresses,
                          bytes_sent=self._syn_bytes * n * addresses, responses=responses,
                          status="COMPLETE")

    def decision(self, world: World, k: int, ip: int, t: int, before, state, plan, *, individually: bool,
                 policy: str) -> None:
        """One ``decide`` of the simulator (``before``: the per-IP state it had, None if in bulk), on the
        scan recorded just before it."""
        address = world.address(ip)
        last = self._last
        scan_id = last[3] if last is not None and last[:3] == (k, ip, t) else f"sim-{k}-{address}"
        self.decisions.append({
            "ip": address, "policy": policy, "decided_at": self.micros(t), "scan_id": scan_id,
            "previous_status": before.status.value if before is not None else "UNKNOWN",
            "status": state.status.value, "changed": plan.changed, "device": state.device,
            "backoff_step": state.step, "reason": plan.reason.value,
            "next_scan_at": self.micros(plan.at) if individually else None, "port_set": plan.ports.to_record()})

    def stream(self) -> list[tuple[str, dict]]:
        """The records in time order (a scan's responses before its ScanDone), as agents send them."""
        def key(item):
            name, r = item
            return (r["ended_at"], 1) if name == "ScanDone" else (r["timestamp"], 0)
        return sorted(self.records, key=key)


def world_standard_records(world, schedule, standard: PortSet, *, rounds: int | None = None,
                           byte_model: ByteModel = ByteModel.ip_layer()):
    """A standard scan of a synthetic world (:mod:`scanflow.world`) as the sim backend records it:
    ``(schema, record)`` pairs, every address in every round at its scheduled instant (the
    simulator's :class:`scanflow.simulate.Schedule`), the standard set, a ScanEvent per open port
    (and one per banner), then one ScanDone per address. Virtual time 0 is
    :data:`scanflow.world.banners.EPOCH_UNIX`."""
    from connectors.avro_codec import make_event_id
    from scanflow.simulate import SCANNER_STANDARD
    from scanflow.world.banners import NO_BANNER
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
            sid, ts = f"std-{k}-{r}", (EPOCH_UNIX + t) * 1_000_000
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
            ts = (EPOCH_UNIX + int(times[r])) * 1_000_000
            yield "ScanDone", {"scan_id": f"std-{k}-{r}", "agent_id": "sim", "command_id": None, "target": addresses[r],
                               "policy": "STANDARD", "started_at": ts, "ended_at": ts, "port_set": port_set,
                               "ports_probed": len(standard), "addresses_probed": 1, "packets_sent": len(standard),
                               "bytes_sent": probe_bytes + sent.get(r, 0), "responses": 0, "status": "COMPLETE",
                               "status_detail": None}
