"""The adaptive policy: light learned sweeps, an immediate follow-up of anything new, remembered devices.

The paper's policy (:class:`scanflow.policy.EfficientPolicy`) misses what appears between its slow
sweeps and long back-offs: a device on-line 8 % of the time is met by a 3.5-day sweep with about that
chance, and a device replacing a backed-off one waits up to 30 days. The adaptive policy keeps the
paper's per-IP state and back-off, and changes three things (each can be switched off, for the
ablation in ``scanflow evaluate --ablation``), and a fourth on request:

**Light sweeps, learned.** Every address is probed every ``cadence`` (12 h) with a *light* set: the
top ranked ports, as many as the ranking's device detection curve needs to reach ``light_target``
(:func:`light_size`; from the same survey the paper's sets come from). A tracked device's light probe
is the light set; its *full* probe (its model's ports and the ports of malware that infects it, or
the unknown-device set) follows the paper's back-off ladder on top of it. Untracked addresses are
swept per /24 prefix (:class:`SweepCadence`): every ``cadence`` where something has answered, every
``quiet_interval`` where nothing ever has (TASS: prefixes without hosts stay without hosts); the
table is learned from what the scan itself has seen and refreshed as the lake fills.

**Immediate follow-up.** When an answer is new for its address (a new responder, a port that was
closed on the ports probed both times, a banner of another device), the address gets a
classification probe ``followup_delay`` later (minutes, not the next slot) with the *follow-up set*:
the standard set minus its lowest-ranked ports, so a light probe and its follow-up together never
exceed what the standard scan sends an address in a slot. At most one follow-up per address per
``standard_interval``; the device is estimated from the follow-up's answer.

**Remembered devices.** A device that goes silent is remembered (its ports, banner digests, estimate
and back-off step) for ``memory_for``; when the same device answers again (same ports and banners on
the ports probed) it resumes where it was, without a follow-up: a sporadic device coming back costs a
light probe, not a classification scan.

**Devices that move** (``moves``, off by default). A new answer that is the device exactly one other
address of its /24 remembers resumes that device's state there (:meth:`AdaptivePolicy.moved`); the
runners then decide a /24's addresses together, in time order (:meth:`scanflow.lifecycle.step.Lifecycle.wake_group`).

Ethics are the paper's: no address gets more probes in a slot than the standard scan sends it (the
simulator measures it: ``PolicyRun.max_slot_probes``); the order of targets is the schedule's.

Time is seconds; nothing here reads a clock. ``decide(state, obs, now, ip)`` is the same shape as the
paper's policy, so the one per-IP lifecycle (:mod:`scanflow.lifecycle.step`) runs both.
"""

from __future__ import annotations

import operator

import ipaddress
from dataclasses import dataclass, fields, replace
from typing import Iterable, Mapping

import numpy as np

from scanflow.estimate import Estimator
from scanflow.fingerprint import port_digests
from scanflow.policy import (DAY, DEFAULT_LADDER, HOUR, IpState, IpStatus, Observation, PolicyPortSets, Reason,
                             ScanPlan)
from scanflow.portsets import PortSet

LIGHT, FULL, FOLLOWUP, REST, FIRST = 0, 1, 2, 3, 4
PROBE_KINDS = ("light", "full", "followup", "rest", "followup-first")
#: What ``AdaptiveParams.initial_scan`` may name.
INITIAL_SCANS = ("silent", "standard", "light")
#: Addresses per sweep prefix (/24).
PREFIX_BITS = 8


@dataclass(frozen=True, slots=True)
class AdaptiveParams:
    """Every tunable of the adaptive policy (seconds). The mechanism switches exist for the ablation."""

    cadence: float = 12 * HOUR
    quiet_interval: float = 3.5 * DAY
    ladder: tuple[float, ...] = DEFAULT_LADDER
    #: Shorter back-off cap for models that malware with known active exploitation infects.
    exploited_cap: float = 3 * DAY
    standard_interval: float = 12 * HOUR
    retry_interval: float = 12 * HOUR
    followup_delay: float = 300.0
    memory_for: float = 30 * DAY
    #: Device detection target the light set's size is derived from (``light_ports`` 0), or a fixed size.
    light_target: float = 0.93
    light_ports: int = 0
    #: The first probe of an address: ``standard`` (the paper's classification round, which also finds
    #: the devices the light set misses), ``silent`` (the paper's silent sweep set: most of those, for
    #: a twentieth of the cost) or ``light``.
    initial_scan: str = "silent"
    followup: bool = True
    learned_cadence: bool = True
    memory: bool = True
    #: Full probes of a device the knowledge base cannot name use the ports predicted from its ports
    #: (:mod:`scanflow.predict`, when the sets carry a predictor) instead of the unknown-device set.
    predicted: bool = False
    #: Devices that move: a new answer at an address that matches exactly one device another address
    #: of its /24 remembers (:meth:`AdaptivePolicy.moved`) resumes that device's state there.
    moves: bool = False

    def __post_init__(self) -> None:
        for name in ("cadence", "quiet_interval", "standard_interval", "retry_interval", "memory_for",
                     "exploited_cap"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")
        if self.followup_delay < 0 or self.followup_delay >= self.cadence:
            raise ValueError(f"followup_delay: must be in [0, cadence), got {self.followup_delay}")
        if not self.ladder or any(s <= 0 for s in self.ladder) or any(b < a for a, b in zip(self.ladder, self.ladder[1:])):
            raise ValueError(f"ladder: give non-decreasing positive intervals, got {self.ladder}")
        if self.initial_scan not in INITIAL_SCANS:
            raise ValueError(f"initial_scan: must be one of {', '.join(INITIAL_SCANS)}, got {self.initial_scan!r}")
        if not 0 < self.light_target <= 1 or self.light_ports < 0:
            raise ValueError(f"light_target must be in (0, 1] and light_ports >= 0, got {self.light_target}, "
                             f"{self.light_ports}")

    @property
    def silent_interval(self) -> float:
        """The sweep period of a busy prefix (what the live sweeps use as their base period)."""
        return self.cadence

    @property
    def cap(self) -> float:
        """The longest back-off interval."""
        return self.ladder[-1]


def light_size(ddr_curve: tuple[float, ...] | list[float], target: float) -> int:
    """The light set's port count: the smallest k whose top-k device detection rate (the ranking's
    curve, :class:`scanflow.portsets.Derivation.ddr_curve`) reaches ``target``."""
    for i, rate in enumerate(ddr_curve):
        if rate >= target - 1e-12:
            return i + 1
    return len(ddr_curve)


@dataclass(frozen=True)
class AdaptivePortSets:
    """The adaptive policy's sets, all published by name (a command refers to them): ``light`` (top
    ranked ports), ``followup`` (standard minus its ``len(light)`` lowest-ranked ports), ``unknown``
    (the unknown-device set plus the light ports) and ``standard``."""

    standard: PortSet
    light: PortSet
    followup: PortSet
    unknown: PortSet
    #: The paper's silent sweep set (a possible first probe, ``AdaptiveParams.initial_scan``).
    deep: PortSet | None = None
    #: The standard ports the unknown-device set leaves out: the follow-up of a change seen by a
    #: probe with that set (together they are the standard set).
    rest: PortSet | None = None
    #: The follow-up of an answer to the first probe with the paper's silent set: the standard set
    #: minus as many of its lowest-ranked ports as the silent set has (None: ``followup`` fits).
    first: PortSet | None = None

    @property
    def silent(self) -> PortSet:
        """What untracked addresses are swept with (the light set)."""
        return self.light


def adaptive_sets(sets: PolicyPortSets, ranking: Iterable[tuple[int, int]] | Iterable[int], n_light: int,
                  *, drop: int | None = None, first_drop: int | None = None,
                  version: int | None = None) -> AdaptivePortSets:
    """Build the adaptive sets from the paper's three sets and the response ranking (best first, ports
    or ``(port, ips)`` pairs), with ``n_light`` light ports; the follow-up set leaves out the ``drop``
    (default ``n_light``) lowest-ranked standard ports: the size of the largest probe a follow-up can
    follow in the same slot (``first_drop``: the same for the follow-up of a first probe with the
    silent set, when that is larger)."""
    ranked = [p if isinstance(p, int) else p[0] for p in ranking]
    ranked = [p for p in ranked if p in sets.standard.ports]
    if not 1 <= n_light <= len(ranked):
        raise ValueError(f"light set: need 1..{len(ranked)} ranked ports, got {n_light}")
    v = version or sets.standard.version or 1
    light = PortSet.named("light", v, ranked[:n_light])
    unranked = sets.standard.ports - set(ranked)
    # drop the lowest-ranked ports (unranked ones first), as many as the light set has
    order = sorted(unranked) + ranked[n_light:][::-1]
    dropped = set(order[:n_light if drop is None else drop])
    followup = PortSet.named("followup", v, sets.standard.ports - dropped)
    unknown = PortSet.named("unknown-light", v, sets.unknown.ports | light.ports)
    # the rest leaves out as many of its lowest-ranked ports as the unknown set has outside the
    # standard set, so that the two probes together never exceed the standard set
    rest_order = [p for p in order if p not in unknown.ports]
    rest = PortSet.named("followup-rest", v, (sets.standard.ports - unknown.ports)
                         - set(rest_order[:len(unknown.ports - sets.standard.ports)]))
    first = None
    if first_drop is not None and first_drop > len(dropped):
        first = PortSet.named("followup-first", v, sets.standard.ports - set(order[:first_drop]))
    if not len(followup):
        raise ValueError(f"the follow-up set is empty: the standard set ({len(sets.standard)} ports) is no larger "
                         f"than the largest probe a follow-up may follow ({len(dropped)} ports); derive larger sets")
    # an empty set is never planned: when the unknown-device set already holds the whole standard set
    # (the provisional sets) nothing is left to follow up on, and no room is left for a first follow-up
    return AdaptivePortSets(sets.standard, light, followup, unknown, sets.silent, rest if len(rest) else None,
                            first if first is not None and len(first) else None)


@dataclass(frozen=True)
class SweepCadence:
    """How often an untracked address is swept, per /24 prefix: ``quiet_interval`` in the prefixes
    listed as quiet, ``cadence`` elsewhere. ``offset`` is added to integer addresses (a simulator's
    address indices) before taking the prefix; text addresses are parsed."""

    cadence: float
    quiet_interval: float
    quiet: frozenset[int] = frozenset()
    offset: int = 0

    def prefix(self, ip) -> int:
        """The /24 prefix number of ``ip`` (an address text or an integer)."""
        if isinstance(ip, (int, np.integer)):
            return (int(ip) + self.offset) >> PREFIX_BITS
        return int(ipaddress.IPv4Address(ip)) >> PREFIX_BITS

    def interval(self, ip) -> float:
        """Seconds between sweeps of ``ip`` while it stays silent (``cadence`` if ``ip`` is None)."""
        if ip is None or not self.quiet:
            return self.cadence
        return self.quiet_interval if self.prefix(ip) in self.quiet else self.cadence

    def intervals(self, ips: np.ndarray) -> np.ndarray:
        """:meth:`interval` of integer addresses, vectorised."""
        out = np.full(len(ips), self.cadence, dtype=np.float64)
        if self.quiet and len(ips):
            blocks = (np.asarray(ips, dtype=np.int64) + self.offset) >> PREFIX_BITS
            out[np.isin(blocks, np.fromiter(self.quiet, dtype=np.int64))] = self.quiet_interval
        return out

    def learned(self, prefixes: Iterable[int], answered: Iterable[int]) -> "SweepCadence":
        """The table after a look at the data: of ``prefixes`` (every prefix swept so far), those where
        nothing has ever answered (``answered``: prefixes with a responder) are quiet."""
        return replace(self, quiet=frozenset(prefixes) - frozenset(answered))

    def to_dict(self) -> dict:
        """JSON-ready form (``scanflow`` writes it beside a lake; the live sweeps read it)."""
        return {"cadence_s": self.cadence, "quiet_interval_s": self.quiet_interval,
                "quiet_prefixes": sorted(str(ipaddress.IPv4Network((p << PREFIX_BITS, 32 - PREFIX_BITS)))
                                         for p in self.quiet)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "SweepCadence":
        """Inverse of :meth:`to_dict`."""
        quiet = frozenset(int(ipaddress.IPv4Network(n).network_address) >> PREFIX_BITS
                          for n in data.get("quiet_prefixes", ()))
        return cls(float(data["cadence_s"]), float(data["quiet_interval_s"]), quiet)


class AdaptivePolicy:
    """The adaptive policy (see the module docstring). ``name`` is the wire name of the efficient
    scanner (the ScanPolicy symbol); ``variant`` says which efficient policy it is."""

    name = "EFFICIENT"
    variant = "adaptive"

    def __init__(self, port_sets: AdaptivePortSets, estimator: Estimator, params: AdaptiveParams = AdaptiveParams(),
                 cadence: SweepCadence | None = None, exploited: Iterable[str] = (), predictor=None):
        self.port_sets = port_sets
        self.predictor = predictor if params.predicted else None
        self.estimator = estimator
        self.params = params
        self.cadence = cadence or SweepCadence(params.cadence, params.quiet_interval)
        self.exploited = frozenset(exploited)
        self._ladder = params.ladder
        self._last = len(params.ladder) - 1
        light = port_sets.light
        self._full: dict[str, PortSet] = {}
        for ps in estimator.port_sets():
            name = f"light+{ps.name or ps.label or ps.digest}"
            self._full[ps.ref] = PortSet.named(name, ps.version or 1, light.ports | ps.ports)
        self._by_ref = {ps.ref: ps.ports for ps in self.published()}
        self._slot_max = max([len(light)] + [len(ps) for ps in self._full.values()])
        if port_sets.deep is not None and port_sets.first is None:
            self._slot_max = max(self._slot_max, len(port_sets.deep))

    # -- what the runners ask ----------------------------------------------------------------------

    def published(self) -> tuple[PortSet, ...]:
        """Every named set a command of this policy can refer to."""
        s = self.port_sets
        extra = tuple(x for x in (s.deep, s.rest, s.first) if x is not None)
        return (s.standard, s.light, s.followup, s.unknown, *extra, *self._full.values())

    @property
    def initial_ports(self) -> PortSet:
        """The first probe of an address (``AdaptiveParams.initial_scan``): the standard set, or the
        light set (a responder then gets its follow-up at once)."""
        s = self.port_sets
        return {"standard": s.standard, "silent": s.deep or s.light, "light": s.light}[self.params.initial_scan]

    def start(self, now: float) -> tuple[IpState, ScanPlan]:
        """An address never probed: its first probe now."""
        return IpState(), ScanPlan(now, self.initial_ports, Reason.INITIAL)

    def sweep_interval(self, ip=None) -> float:
        """Seconds between sweeps of a silent, untracked ``ip`` (its prefix's learned cadence)."""
        return self.cadence.interval(ip) if self.params.learned_cadence else self.params.cadence

    def sweep_intervals(self, ips: np.ndarray) -> np.ndarray:
        """:meth:`sweep_interval` of integer addresses, vectorised (the simulator's bulk sweeps)."""
        if self.params.learned_cadence:
            return self.cadence.intervals(ips)
        return np.full(len(ips), self.params.cadence, dtype=np.float64)

    def interval(self, step: int) -> float:
        """The back-off interval of ladder step ``step`` (capped) between full probes."""
        return self._ladder[min(max(step, 0), self._last)]

    def ports_for(self, state: IpState) -> PortSet:
        """The set the next probe of ``state`` uses."""
        if state.probe == FOLLOWUP:
            return self.port_sets.followup
        if state.probe == FIRST and self.port_sets.first is not None:
            return self.port_sets.first
        if state.probe == REST and self.port_sets.rest is not None:
            return self.port_sets.rest
        if state.probe == FULL and state.responsive:
            if state.device is None and self.predictor is not None:
                predicted = self.predictor.predict(state.open_ports)
                if predicted is not None:
                    return predicted
            return self._full_set(state.device)
        return self.port_sets.light

    def urgent(self, state: IpState, now: float) -> tuple[IpState, ScanPlan]:
        """Rescan now with the full set (e.g. the knowledge base gained ports for the model)."""
        new = _put(state, probe=FULL) if state.responsive else state
        return new, ScanPlan(now, self.ports_for(new), Reason.URGENT)

    # -- the decision ------------------------------------------------------------------------------

    def decide(self, state: IpState | None, obs: Observation, now: float, ip=None) -> tuple[IpState, ScanPlan]:
        """The new state of the address and its next probe, after ``obs`` made at ``now``."""
        state = state or IpState()
        digests = port_digests(obs.banners)
        if (state.probe == REST and obs.complete and obs.probed is not None and self.port_sets.rest is not None
                and obs.probed.ref == self.port_sets.rest.ref):
            # the rest of the standard set: silence there says nothing about the device's other ports
            return self._rest(state, obs, now, digests)
        if not obs.open_ports:
            if not obs.complete:   # inconclusive: keep everything, try again
                return state, ScanPlan(now + self.params.retry_interval, self.ports_for(state), Reason.BACKOFF)
            return self._silent(state, obs, now, ip)
        if not state.responsive:
            if state.recall and self._same_device(state, obs, digests):
                return self._back(state, obs, now)
            return self._new(state, obs, now, Reason.NEW_RESPONDER, digests)
        if (state.probe in (FOLLOWUP, FIRST) and obs.probed is not None
                and obs.probed.ref == self.ports_for(state).ref):
            return self._classified(state, obs, now, digests)
        if not obs.complete:      # alive, nothing else known
            new = _put(state, last_seen=now)
            return new, ScanPlan(now + self.params.retry_interval, self.ports_for(state), Reason.BACKOFF)
        if self._changed(state, obs, digests):
            return self._new(state, obs, now, Reason.CHANGED, digests)
        return self._unchanged(state, obs, now, digests)

    def _full_set(self, device: str | None) -> PortSet:
        if device is None:
            return self.port_sets.unknown
        return self._full[self.estimator.port_set(device).ref]

    def _cap(self, device: str | None) -> float:
        return self.params.exploited_cap if device is not None and device in self.exploited else self.params.cap

    def _next(self, state: IpState, now: float) -> tuple[float, int]:
        """When the next probe of a tracked device is and its kind: a light probe every cadence, a
        full one when the back-off says its model's ports are due."""
        at = now + self.params.cadence
        wait = min(self.interval(state.step), self._cap(state.device))
        full = state.full_at is None or state.full_at + wait <= at + 1e-6
        return at, FULL if full else LIGHT

    def _may_follow_up(self, state: IpState, obs: Observation, now: float) -> int | None:
        """The kind of follow-up ``obs`` may have (None: none): FOLLOWUP after a small probe, REST
        after a probe with the unknown-device set; one per ``standard_interval``, and a probe plus its
        follow-up stay within the standard scan's probes of one slot."""
        if not self.params.followup:
            return None
        if state.followup_at is not None and now - state.followup_at < self.params.standard_interval:
            return None
        if obs.probed is None or len(obs.probed) <= self._slot_max:
            return FOLLOWUP
        s = self.port_sets
        if s.first is not None and s.deep is not None and obs.probed.ref == s.deep.ref:
            return FIRST
        if self.port_sets.rest is not None and obs.probed.ref == self.port_sets.unknown.ref:
            return REST
        return None

    def _new(self, state: IpState, obs: Observation, now: float, reason: Reason,
             digests: tuple[tuple[int, str], ...]) -> tuple[IpState, ScanPlan]:
        """Something new answered: follow up at once when allowed, otherwise estimate from what answered
        (after a probe with the unknown-device set: estimate from it and follow up on the rest)."""
        first = state.first_seen if state.first_seen is not None else now
        kind = self._may_follow_up(state, obs, now)
        estimate = self.estimator.estimate(obs.open_ports, obs.banners)
        if kind in (FOLLOWUP, FIRST):
            # what answered may already name the device (a port the follow-up leaves out, e.g. a Telnet
            # banner when the sets are small): kept unless the follow-up names another
            status = IpStatus.RESPONSIVE_ESTIMATED if estimate.model is not None else IpStatus.RESPONSIVE_UNESTIMATED
            new = IpState(status, 0, obs.open_ports, digests, estimate.model, estimate.confidence,
                          obs.probed.ref if obs.probed is not None else None, 0, state.scans + 1, first, now, now,
                          now, frozenset(), kind, now, state.full_at)
            return new, ScanPlan(now + self.params.followup_delay, self.ports_for(new), reason, True)
        device = estimate.model
        status = IpStatus.RESPONSIVE_ESTIMATED if device is not None else IpStatus.RESPONSIVE_UNESTIMATED
        new = IpState(status, 0, obs.open_ports, digests, device, estimate.confidence,
                      obs.probed.ref if obs.probed is not None else None, 0, state.scans + 1, first, now, now, now,
                      frozenset(), LIGHT, state.followup_at, None)
        if kind == REST:
            new = _put(new, probe=REST, followup_at=now, full_at=now)
            return new, ScanPlan(now + self.params.followup_delay, self.port_sets.rest, reason, True)
        at, kind = self._next(new, now)
        new = _put(new, probe=kind)
        return new, ScanPlan(at, self.ports_for(new), reason, True)

    def _rest(self, state: IpState, obs: Observation, now: float,
              digests: tuple[tuple[int, str], ...]) -> tuple[IpState, ScanPlan]:
        """The rest of the standard set answered after a change seen with the unknown-device set: its
        ports join the device's (the estimate was made from the unknown-device probe)."""
        ports = state.open_ports | obs.open_ports
        merged = dict(state.digests)
        merged.update(digests)
        new = _put(state, open_ports=ports, digests=tuple(sorted((p, d) for p, d in merged.items() if p in ports)),
                      scans=state.scans + 1, last_seen=now, last_scanned=now, probe=LIGHT)
        at, kind = self._next(new, now)
        new = _put(new, probe=kind)
        return new, ScanPlan(at, self.ports_for(new), Reason.BACKOFF, False)

    def _classified(self, state: IpState, obs: Observation, now: float,
                    digests: tuple[tuple[int, str], ...]) -> tuple[IpState, ScanPlan]:
        """The follow-up answered: estimate the device from it (it probed nearly the standard set); when
        it names none, the estimate from the answer it followed up stands (that answer's ports are kept)."""
        estimate = self.estimator.estimate(obs.open_ports, obs.banners)
        device = estimate.model
        if device is None and state.device is not None:
            device, estimate = state.device, replace(estimate, confidence=state.confidence)
        status = IpStatus.RESPONSIVE_ESTIMATED if device is not None else IpStatus.RESPONSIVE_UNESTIMATED
        ports = obs.open_ports | (state.open_ports - obs.probed.ports)
        merged = dict(state.digests)
        merged.update(digests)
        digests = tuple(sorted((p, d) for p, d in merged.items() if p in ports))
        new = _put(state, status=status, open_ports=ports, digests=digests, device=device,
                      confidence=estimate.confidence, probed=obs.probed.ref, scans=state.scans + 1, last_seen=now,
                      last_scanned=now, probe=LIGHT, full_at=now, step=0)
        at, kind = self._next(new, now)
        new = _put(new, probe=kind)
        return new, ScanPlan(at, self.ports_for(new), Reason.BACKOFF, False)

    def _unchanged(self, state: IpState, obs: Observation, now: float,
                   digests: tuple[tuple[int, str], ...]) -> tuple[IpState, ScanPlan]:
        """Same answer: a full probe moves the back-off one step; ports not probed keep what was known."""
        was_full = state.probe == FULL
        kept = state.open_ports - obs.probed.ports if obs.probed is not None else frozenset()
        ports = kept | obs.open_ports
        if digests != state.digests:
            merged = dict(state.digests)
            merged.update(digests)
            digests = tuple(sorted((p, d) for p, d in merged.items() if p in ports))
        step = min(state.step + 1, self._last) if was_full else state.step
        if state.device is None and digests != state.digests:
            # an unnamed device said something it had not said before (a banner that came too late
            # for its first round, on a port its follow-up left out): name it from this answer if it can
            estimate = self.estimator.estimate(obs.open_ports, obs.banners)
            if estimate.model is not None:
                state = _put(state, status=IpStatus.RESPONSIVE_ESTIMATED, device=estimate.model,
                             confidence=estimate.confidence)
        new = _put(state, step=step, open_ports=ports, digests=digests,
                      probed=obs.probed.ref if obs.probed is not None else state.probed, silent_rounds=0,
                      scans=state.scans + 1, last_seen=now, last_scanned=now,
                      full_at=now if was_full else state.full_at)
        at, kind = self._next(new, now)
        new = _put(new, probe=kind)
        return new, ScanPlan(at, self.ports_for(new), Reason.BACKOFF, False)

    def _silent(self, state: IpState, obs: Observation, now: float, ip) -> tuple[IpState, ScanPlan]:
        """Nothing answered: a tracked device is remembered (probed every cadence) while ``memory_for``
        lasts since it was last seen; everything else is left to the sweeps of its prefix."""
        p = self.params
        if state.responsive and obs.probed is not None and not (state.open_ports & obs.probed.ports):
            # the probe could not see this device (none of its ports were probed): not a silence; its
            # next probe is a full one, which holds its ports
            new = _put(state, scans=state.scans + 1, last_scanned=now, probe=FULL)
            return new, ScanPlan(now + p.cadence, self.ports_for(new), Reason.BACKOFF, False)
        remember = state.open_ports if state.responsive else state.recall
        last_seen = state.last_seen
        if (p.memory and remember and last_seen is not None and now + p.cadence - last_seen <= p.memory_for):
            new = _put(state, status=IpStatus.NON_RESPONSIVE, open_ports=frozenset(), recall=remember,
                          probed=obs.probed.ref if obs.probed is not None else state.probed,
                          silent_rounds=state.silent_rounds + 1, scans=state.scans + 1, last_scanned=now,
                          last_changed=now if state.responsive else state.last_changed, probe=LIGHT)
            return new, ScanPlan(now + p.cadence, self.port_sets.light, Reason.SWEEP, changed=state.responsive)
        new = IpState(IpStatus.NON_RESPONSIVE, 0, frozenset(), (), None, 0.0,
                      obs.probed.ref if obs.probed is not None else None, state.silent_rounds + 1, state.scans + 1,
                      state.first_seen, state.last_seen, now, now if state.responsive else state.last_changed)
        return new, ScanPlan(now + self.sweep_interval(ip), self.port_sets.light, Reason.SWEEP,
                             changed=state.responsive)

    def _same_device(self, state: IpState, obs: Observation, digests: tuple[tuple[int, str], ...]) -> bool:
        """A remembered device answers again as itself: the same open ports and banner digests on the
        ports probed this time (and at least one of its ports answered)."""
        probed = obs.probed.ports if obs.probed is not None else obs.open_ports
        before = state.recall & probed
        if not before or before != obs.open_ports:
            return False
        old = dict(state.digests)
        return all(old.get(port, digest) == digest for port, digest in digests)

    def moved(self, state: IpState | None, obs: Observation, now: float,
              neighbours: Iterable[IpState]) -> IpState | None:
        """Devices that move (``AdaptiveParams.moves``): for an answer ``obs`` that is new for its
        address (state ``state``, None if untracked: not the address's own remembered device, or a change
        from its responsive device), the remembered state of the device it shows, when exactly one of
        ``neighbours`` (the states of the other addresses of the /24) remembers it. None otherwise, or
        when the answer carries no banner (pools of one ISP's routers answer alike on ports alone: a
        match on ports names a model, not a device). The policy then decides with that state as the
        address's own: the device resumes its estimate and back-off step, without a follow-up.

        A memory counts from the instant after the device left (``last_changed``); every runner decides
        a /24's answers in time order, so each finds the same match. The neighbour keeps its memory (a
        runner changes nothing but the answering address): should the device come back there, it
        resumes there too."""
        p = self.params
        if not (p.moves and p.memory and obs.open_ports and obs.banners):
            return None
        digests = port_digests(obs.banners)
        if not digests:
            return None
        if state is not None and state.responsive:
            # another device in place of the address's own (a change, not a classification under way)
            if state.probe in (FOLLOWUP, FIRST, REST) or not obs.complete or not self._changed(state, obs, digests):
                return None
        elif state is not None and state.recall and self._same_device(state, obs, digests):
            return None
        hit = None
        for state in neighbours:
            if (state.recall and not state.responsive and state.last_changed is not None
                    and state.last_changed < now and self._same_device(state, obs, digests)):
                if hit is not None:
                    return None
                hit = state
        return hit

    def _back(self, state: IpState, obs: Observation, now: float) -> tuple[IpState, ScanPlan]:
        """A remembered device came back: resume its estimate and back-off step (no follow-up); its
        next probe is a full one, which checks on its other ports that it is the same device."""
        status = IpStatus.RESPONSIVE_ESTIMATED if state.device is not None else IpStatus.RESPONSIVE_UNESTIMATED
        new = _put(state, status=status, open_ports=state.recall, recall=frozenset(), silent_rounds=0,
                      probed=obs.probed.ref if obs.probed is not None else state.probed, scans=state.scans + 1,
                      last_seen=now, last_scanned=now, probe=FULL)
        return new, ScanPlan(now + self.params.cadence, self.ports_for(new), Reason.BACKOFF, False)

    def _changed(self, state: IpState, obs: Observation, digests: tuple[tuple[int, str], ...]) -> bool:
        """A change on the ports probed both times: a port opened or closed, or another banner."""
        cur = obs.probed.ports if obs.probed is not None else None
        prev = self._by_ref.get(state.probed) if state.probed is not None else None
        # only the few open ports are tested against the (possibly ten-thousand-port) probed sets

        def common(port: int) -> bool:
            return (cur is None or port in cur) and (prev is None or port in prev)

        if {p for p in state.open_ports if common(p)} != {p for p in obs.open_ports if common(p)}:
            return True
        if digests == state.digests:
            return False
        old = dict(state.digests)
        for port, digest in digests:
            was = old.get(port)
            if was is not None and was != digest and common(port):
                return True
        return False


def build_adaptive(sets: PolicyPortSets, ranking, ddr_curve, estimator: Estimator,
                   params: AdaptiveParams = AdaptiveParams(), *, cadence: SweepCadence | None = None,
                   exploited: Iterable[str] = (), predictor=None) -> AdaptivePolicy:
    """The adaptive policy from a derivation's sets, ranking and detection curve."""
    n = params.light_ports or light_size(ddr_curve, params.light_target)
    ranked = [p if isinstance(p, int) else p[0] for p in ranking][:n]
    # the follow-up leaves room for the largest probe it can follow in the slot: a light or full probe,
    # or a first probe with the paper's silent set
    drop = max([n] + [len(ps.ports | frozenset(ranked)) for ps in estimator.port_sets()])
    return AdaptivePolicy(adaptive_sets(sets, ranking, n, drop=drop, first_drop=len(sets.silent)), estimator,
                          params, cadence, exploited,
                          predictor if predictor is not None else getattr(sets, "predictor", None))


#: The efficient policies ``--policy`` can name: the paper's method and the adaptive one.
POLICIES = ("adaptive", "paper")
#: Not a policy to run, a reference for the evaluation (``scanflow evaluate --ceiling``): the standard
#: scan itself at the efficient scan's own instants, what any policy probing there could at most find.
TWIN = "standard-twin"


def make_policy(name: str, sets: PolicyPortSets, estimator: Estimator, *, paper_params=None,
                adaptive_params: AdaptiveParams | None = None, cadence: SweepCadence | None = None,
                exploited: Iterable[str] = ()):
    """The efficient policy called ``name`` (:data:`POLICIES`) on ``sets``; ``ValueError`` naming the
    known ones otherwise. The adaptive policy needs the sets' ranking (``PolicyPortSets.of``)."""
    from scanflow.policy import EfficientPolicy, PolicyParams

    if name == "paper":
        return EfficientPolicy(sets, estimator, paper_params or PolicyParams())
    if name == TWIN:
        from scanflow.policy import StandardPolicy

        return StandardPolicy(sets, paper_params or PolicyParams())
    if name == "adaptive":
        if not sets.ranking:
            raise ValueError("the adaptive policy needs the response ranking the port sets were cut from; "
                             "derive the sets again (scanflow portsets derive) or use --policy paper")
        return build_adaptive(sets, sets.ranking, sets.ddr_curve or (1.0,) * len(sets.ranking), estimator,
                              adaptive_params or AdaptiveParams(), cadence=cadence, exploited=exploited)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")


_STATE_FIELDS = tuple(f.name for f in fields(IpState))
_STATE_VALUES = operator.attrgetter(*_STATE_FIELDS)
_STATE_INDEX = {name: i for i, name in enumerate(_STATE_FIELDS)}


def _put(state: IpState, **changes) -> IpState:
    """``state`` with ``changes`` (what ``dataclasses.replace`` does, several times faster: it runs on
    every probe of every tracked address)."""
    values = list(_STATE_VALUES(state))
    for name, value in changes.items():
        values[_STATE_INDEX[name]] = value
    return IpState(*values)
