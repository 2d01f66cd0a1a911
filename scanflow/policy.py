"""Scheduling policies: what to scan on an IP next, and when, after each observation of it.

Time is a float number of **seconds** (POSIX epoch seconds live; any origin in a simulation or a
replay). Nothing here reads a clock: ``now`` is always a parameter.

Both policies have the same shape, ``decide(state, observation, now) -> (state, plan)``, on frozen
values, so the Beam pipeline, the simulator and the replay make the same decision for the same
history.

The efficient policy (the paper's method) keeps every IP in one of three states:

``NON_RESPONSIVE``          probed with the small *silent* port set every ``silent_interval`` (3.5 d);
``RESPONSIVE_ESTIMATED``    a device model was estimated: probed on the model's ports and the ports of
                            malware that infects it;
``RESPONSIVE_UNESTIMATED``  answered, but no model: probed with the *unknown* port set (~5,100 ports).

The first scan of an IP (``start``) is a classification scan with the *standard* set, as in the paper
("devices are estimated from the banners and ports obtained in the first scan"; only the next and
later scans use the estimated model's ports): an IP that answers it is estimated from that round, one
that does not joins the silent sweep. ``PolicyParams.initial_scan = "silent"`` makes the first scan a
silent sweep instead (cheaper, but the ~5 % of hosts the silent set misses are then never found).

A responsive IP is rescanned on the back-off ladder (12 h, 1 d, 2 d, 3 d, 5 d, 7 d, 14 d, 30 d): one
step further each time the answer is unchanged, back to 12 h when it changes. "Changed" compares the
open ports and normalised banner digests (:mod:`scanflow.fingerprint`) **on the ports probed in both
rounds**, so narrowing the probe to a model's ports is not mistaken for a change; a port that
answered without a banner this time is not a change of banner. An IP that stops answering falls back
to ``NON_RESPONSIVE`` after ``demote_after`` complete silent rounds (1, as in the paper). A round that
did not complete (aborted, refused, timed out) never changes the state: it is retried after
``retry_interval`` (an incomplete first scan is retried as the first scan, with its set).

Beyond the paper, off by default: with ``PolicyParams.recall_interval`` > 0 an IP that answered before
and goes silent is probed on the ports it last answered on every ``recall_interval`` until
``recall_for`` after its last answer (a *recall*), and only then joins the silent sweep.

The standard policy (the baseline) probes every IP with the standard set every 12 h.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from scanflow.estimate import Estimator
from scanflow.fingerprint import fingerprint as _fingerprint, port_digests
from scanflow.portsets import MAX_INLINE_PORTS, PortSet

HOUR = 3600.0
DAY = 24 * HOUR
#: The paper's back-off ladder: 12 h, 1 d, 2 d, 3 d, 5 d, 7 d, 14 d, 30 d (cap).
DEFAULT_LADDER = (12 * HOUR, 1 * DAY, 2 * DAY, 3 * DAY, 5 * DAY, 7 * DAY, 14 * DAY, 30 * DAY)
#: What the first scan of an IP may use (``PolicyParams.initial_scan``); the first is the paper's.
INITIAL_SCANS = ("standard", "silent")


class IpStatus(str, enum.Enum):
    """The three states (values are the ``IpStatus`` symbols of the Avro schemas)."""

    NON_RESPONSIVE = "NON_RESPONSIVE"
    RESPONSIVE_ESTIMATED = "RESPONSIVE_ESTIMATED"
    RESPONSIVE_UNESTIMATED = "RESPONSIVE_UNESTIMATED"


class Reason(str, enum.Enum):
    """Why the next scan is scheduled (values are the ``CommandReason`` symbols of the schemas)."""

    INITIAL = "INITIAL"              # first scan of an IP
    BACKOFF = "BACKOFF"              # same answer (or an inconclusive round): next ladder step
    CHANGED = "CHANGED"              # the answer changed: a new device, back to 12 h
    NEW_RESPONDER = "NEW_RESPONDER"  # a silent IP answered
    SWEEP = "SWEEP"                  # silent: covered by the silent sweep cadence
    URGENT = "URGENT"                # an operator asked for a rescan now


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Every tunable of the efficient and standard policies; the defaults are the paper's."""

    ladder: tuple[float, ...] = DEFAULT_LADDER
    silent_interval: float = 3.5 * DAY
    standard_interval: float = 12 * HOUR
    retry_interval: float = 12 * HOUR
    demote_after: int = 1
    #: The port set of an IP's first scan: "standard" (the paper: classify every IP once with the
    #: standard set) or "silent" (start every IP in the silent sweep).
    initial_scan: str = "standard"
    #: Extension beyond the paper, off by default (0): an IP that answered before and went silent is
    #: probed on the ports it last answered on every ``recall_interval`` seconds while less than
    #: ``recall_for`` seconds have passed since its last answer, and only then joins the silent sweep.
    recall_interval: float = 0.0
    recall_for: float = 7 * DAY

    def __post_init__(self) -> None:
        if not self.ladder or any(s <= 0 for s in self.ladder):
            raise ValueError("ladder: give one or more positive intervals in seconds, e.g. (43200, 86400)")
        if any(b < a for a, b in zip(self.ladder, self.ladder[1:])):
            raise ValueError(f"ladder: intervals must not decrease, got {self.ladder}")
        for name in ("silent_interval", "standard_interval", "retry_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")
        if self.demote_after < 1:
            raise ValueError(f"demote_after: must be >= 1 silent round, got {self.demote_after}")
        if self.recall_interval < 0 or self.recall_for <= 0:
            raise ValueError(f"recall_interval, recall_for: must be >= 0 and > 0 seconds, got "
                             f"{self.recall_interval}, {self.recall_for}")
        if self.initial_scan not in INITIAL_SCANS:
            raise ValueError(f"initial_scan: must be one of {', '.join(INITIAL_SCANS)}, got {self.initial_scan!r}")

    @property
    def cap(self) -> float:
        """The longest interval (last rung)."""
        return self.ladder[-1]


def params_from_settings(policy_settings) -> PolicyParams:
    """:class:`PolicyParams` from the ``[policy]`` section (:class:`scanflow.config.PolicySettings`)."""
    return PolicyParams(ladder=tuple(h * HOUR for h in policy_settings.ladder_hours),
                        silent_interval=policy_settings.silent_interval_h * HOUR,
                        standard_interval=policy_settings.standard_interval_h * HOUR,
                        retry_interval=policy_settings.retry_interval_h * HOUR,
                        demote_after=policy_settings.demote_after,
                        initial_scan=("standard" if policy_settings.initial_scan == "auto"
                                      else policy_settings.initial_scan),
                        recall_interval=policy_settings.recall_interval_h * HOUR,
                        recall_for=policy_settings.recall_for_h * HOUR)


@dataclass(frozen=True, slots=True)
class PolicyPortSets:
    """The three data-derived port sets the policies use (see :mod:`scanflow.portsets`), with the
    response ranking they were cut from (best first) and its device detection curve, when known (the
    adaptive policy cuts its light set from them)."""

    standard: PortSet
    silent: PortSet
    unknown: PortSet
    ranking: tuple[int, ...] = ()
    ddr_curve: tuple[float, ...] = ()
    #: Ports predicted from a device's ports (:class:`scanflow.predict.PortPredictor`), if learned.
    predictor: object = None

    @classmethod
    def of(cls, derivation) -> "PolicyPortSets":
        """The sets of a :class:`scanflow.portsets.Derivation`, with its ranking, curve and predictor."""
        return cls(derivation.standard, derivation.silent, derivation.unknown,
                   tuple(p for p, _ in derivation.ranking), tuple(derivation.ddr_curve),
                   getattr(derivation, "predictor", None))


@dataclass(frozen=True, slots=True)
class Observation:
    """One complete (or not) scan round of one IP.

    ``open_ports``: ports that answered; ``banners``: ``((port, bytes), ...)`` for those that spoke;
    ``probed``: the port set the round probed (the plan's ``ports``), None if unknown; ``complete``:
    False for an aborted, refused or timed-out round (only a complete round can show silence).
    """

    open_ports: frozenset[int]
    banners: tuple[tuple[int, bytes], ...] = ()
    probed: PortSet | None = None
    complete: bool = True

    @classmethod
    def of(cls, open_ports: Iterable[int], banners: Mapping[int, bytes] | Iterable[tuple[int, bytes]] = (),
           probed: PortSet | None = None, complete: bool = True) -> "Observation":
        """Build from any iterables/mappings; banners on ports that are not open count as open."""
        items = tuple(sorted((banners.items() if isinstance(banners, Mapping) else banners),
                             key=lambda pb: pb[0]))
        ports = frozenset(open_ports) | {p for p, b in items if b is not None}
        return cls(ports, tuple((p, b) for p, b in items if b is not None), probed, complete)

    @property
    def responsive(self) -> bool:
        """True when at least one port answered."""
        return bool(self.open_ports)


@dataclass(frozen=True, slots=True)
class IpState:
    """What a policy keeps about one IP between rounds (times in seconds).

    ``digests`` are per-port normalised banner digests; ``probed`` the ref of the port set of the
    last complete round (so the next comparison knows which ports were looked at both times).
    ``recall`` (only with ``PolicyParams.recall_interval``): the ports a silent IP last answered on,
    probed while the recall lasts (kept one more round after it answers again, for the comparison);
    the adaptive policy keeps a departed device's ports there while it remembers the device.
    """

    status: IpStatus = IpStatus.NON_RESPONSIVE
    step: int = 0
    open_ports: frozenset[int] = frozenset()
    digests: tuple[tuple[int, str], ...] = ()
    device: str | None = None
    confidence: float = 0.0
    probed: str | None = None
    silent_rounds: int = 0
    scans: int = 0
    first_seen: float | None = None
    last_seen: float | None = None
    last_scanned: float | None = None
    last_changed: float | None = None
    recall: frozenset[int] = frozenset()
    #: The adaptive policy only (:mod:`scanflow.adaptive`; the paper's policy leaves them at their
    #: defaults): the kind of the next probe (0 light, 1 full, 2 follow-up), when the last follow-up
    #: was asked for, and when the last full probe (the model's or the unknown-device set) was made.
    probe: int = 0
    followup_at: float | None = None
    full_at: float | None = None

    @property
    def responsive(self) -> bool:
        """True in either responsive state (the IP is tracked individually)."""
        return self.status is not IpStatus.NON_RESPONSIVE

    @property
    def fingerprint(self) -> str | None:
        """Digest of the last known answer (:func:`scanflow.fingerprint.fingerprint`); None if silent."""
        return _fingerprint(self.open_ports, self.digests) if self.open_ports else None


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """The next scan of one IP: when (``at``, seconds), which ports, why, and whether the
    observation that led to it was a change."""

    at: float
    ports: PortSet
    reason: Reason
    changed: bool = False


class Policy(Protocol):
    """What the pipeline, the simulator and the replay call."""

    name: str

    def start(self, now: float) -> tuple[IpState, ScanPlan]: ...

    def decide(self, state: IpState | None, observation: Observation, now: float,
               ip=None) -> tuple[IpState, ScanPlan]: ...


class EfficientPolicy:
    """The paper's efficient scan: three states, per-model port sets, back-off ladder."""

    name = "EFFICIENT"

    def __init__(self, port_sets: PolicyPortSets, estimator: Estimator, params: PolicyParams = PolicyParams()):
        self.port_sets = port_sets
        self.estimator = estimator
        self.params = params
        self._ladder = params.ladder
        self._last = len(params.ladder) - 1
        self._by_ref = {ps.ref: ps.ports for ps in (port_sets.standard, port_sets.silent, port_sets.unknown)}
        self._by_ref.update((ps.ref, ps.ports) for ps in estimator.port_sets())
        self._initial = port_sets.standard if params.initial_scan == "standard" else port_sets.silent

    @property
    def initial_ports(self) -> PortSet:
        """The port set of an IP's first scan (``PolicyParams.initial_scan``)."""
        return self._initial

    def start(self, now: float) -> tuple[IpState, ScanPlan]:
        """An IP never scanned: not (yet) responsive, first scan now with the initial set (the
        standard set by default, so the device is estimated from a full classification round)."""
        return IpState(), ScanPlan(now, self._initial, Reason.INITIAL)

    def interval(self, step: int) -> float:
        """Seconds until the next scan of a responsive IP on ladder step ``step`` (capped)."""
        return self._ladder[min(max(step, 0), self._last)]

    def urgent(self, state: IpState, now: float) -> tuple[IpState, ScanPlan]:
        """Rescan now (e.g. a vulnerability was disclosed) with the IP's current port set; the
        back-off step is kept, so the next observation decides as usual."""
        return state, ScanPlan(now, self.ports_for(state), Reason.URGENT)

    def ports_for(self, state: IpState) -> PortSet:
        """The port set a state is scanned with."""
        if state.status is IpStatus.RESPONSIVE_ESTIMATED and state.device is not None:
            return self.estimator.port_set(state.device)
        if state.status is IpStatus.RESPONSIVE_UNESTIMATED:
            return self.port_sets.unknown
        if state.recall:
            return recall_set(state.recall)
        return self.port_sets.silent

    def decide(self, state: IpState | None, obs: Observation, now: float, ip=None) -> tuple[IpState, ScanPlan]:
        """The new state of the IP and its next scan, after observation ``obs`` made at ``now``
        (``ip`` is not used: the paper's plan does not depend on where the address is)."""
        state = state or IpState()
        if not obs.open_ports:
            if not obs.complete:  # inconclusive: keep everything, try again
                if (not state.responsive and obs.probed is not None and obs.probed.ref == self._initial.ref
                        and self._initial.ref != self.port_sets.silent.ref):
                    # the first (classification) scan did not complete: it is still to be made
                    return state, ScanPlan(now + self.params.retry_interval, self._initial, Reason.INITIAL)
                return state, ScanPlan(now + self.params.retry_interval, self.ports_for(state), Reason.BACKOFF)
            return self._silent(state, obs, now)
        if not obs.complete:
            # Some ports answered but the round was cut short: the IP is alive, nothing else is known.
            new = _with(state, last_seen=now, first_seen=state.first_seen if state.first_seen is not None else now)
            if not state.responsive:
                return self._responsive(new, obs, now, changed=True, reason=Reason.NEW_RESPONDER)
            return new, ScanPlan(now + self.params.retry_interval, self.ports_for(state), Reason.BACKOFF)
        if not state.responsive:
            return self._responsive(state, obs, now, changed=True, reason=Reason.NEW_RESPONDER)
        changed = self._changed(state, obs)
        return self._responsive(state, obs, now, changed=changed,
                                reason=Reason.CHANGED if changed else Reason.BACKOFF)

    def _silent(self, state: IpState, obs: Observation, now: float) -> tuple[IpState, ScanPlan]:
        silent_rounds = state.silent_rounds + 1
        if state.responsive and silent_rounds < self.params.demote_after:
            new = _with(state, silent_rounds=silent_rounds, scans=state.scans + 1, last_scanned=now)
            return new, ScanPlan(now + self.interval(0), self.ports_for(state), Reason.BACKOFF)
        recall = self._recall_ports(state, now)
        new = IpState(IpStatus.NON_RESPONSIVE, 0, frozenset(), (), None, 0.0,
                      obs.probed.ref if obs.probed is not None else None, silent_rounds, state.scans + 1,
                      state.first_seen, state.last_seen, now,
                      now if state.responsive else state.last_changed, recall)
        if recall:
            return new, ScanPlan(now + self.params.recall_interval, recall_set(recall), Reason.SWEEP,
                                 changed=state.responsive)
        return new, ScanPlan(now + self.params.silent_interval, self.port_sets.silent, Reason.SWEEP,
                             changed=state.responsive)

    def _recall_ports(self, state: IpState, now: float) -> frozenset[int]:
        """The ports to recall a silent IP on next (empty: the silent sweep): the last answer's ports,
        while the next recall probe is within ``recall_for`` of the last answer."""
        p = self.params
        if p.recall_interval <= 0 or state.last_seen is None or now + p.recall_interval - state.last_seen > p.recall_for:
            return frozenset()
        ports = state.open_ports if state.responsive else state.recall
        return ports if len(ports) <= MAX_INLINE_PORTS else frozenset()

    def _changed(self, state: IpState, obs: Observation) -> bool:
        cur = obs.probed.ports if obs.probed is not None else None
        prev = self._by_ref.get(state.probed) if state.probed is not None else None
        if prev is None and state.recall and state.probed == recall_set(state.recall).ref:
            prev = state.recall  # the last round was a recall probe
        if cur is None:
            common = prev
        elif prev is None or prev is cur or state.probed == obs.probed.ref:
            common = cur
        else:
            common = prev & cur
        if common is None:
            before, after = state.open_ports, obs.open_ports
        else:
            before, after = state.open_ports & common, obs.open_ports & common
        if before != after:
            return True
        if state.digests and obs.banners:
            old = dict(state.digests)
            for port, digest in port_digests(obs.banners):
                was = old.get(port)
                if was is not None and was != digest and (common is None or port in common):
                    return True
        return False

    def _responsive(self, state: IpState, obs: Observation, now: float, *, changed: bool,
                    reason: Reason) -> tuple[IpState, ScanPlan]:
        digests = port_digests(obs.banners)
        if changed:
            estimate = self.estimator.estimate(obs.open_ports, obs.banners)
            device, confidence = estimate.model, estimate.confidence
            step, open_ports, last_changed = 0, obs.open_ports, now
        else:
            device, confidence = state.device, state.confidence
            step = min(state.step + 1, self._last)
            # ports not probed this time keep what was last known of them
            kept = state.open_ports - obs.probed.ports if obs.probed is not None else frozenset()
            open_ports = kept | obs.open_ports
            if state.digests:
                merged = dict(state.digests)
                merged.update(digests)
                digests = tuple(sorted((p, d) for p, d in merged.items() if p in open_ports))
            last_changed = state.last_changed
        status = IpStatus.RESPONSIVE_ESTIMATED if device is not None else IpStatus.RESPONSIVE_UNESTIMATED
        # a recall round that answered: keep its ports one more round, so the next comparison knows them
        recall = (state.recall if state.recall and obs.probed is not None
                  and obs.probed.ref == recall_set(state.recall).ref else frozenset())
        new = IpState(status, step, open_ports, digests, device, confidence,
                      obs.probed.ref if obs.probed is not None else state.probed, 0, state.scans + 1,
                      state.first_seen if state.first_seen is not None else now, now, now, last_changed, recall)
        ports = self.estimator.port_set(device) if device is not None else self.port_sets.unknown
        return new, ScanPlan(now + self._ladder[step], ports, reason, changed)


class StandardPolicy:
    """The baseline: every IP, the standard port set, every ``standard_interval`` (12 h)."""

    name = "STANDARD"

    def __init__(self, port_sets: PolicyPortSets, params: PolicyParams = PolicyParams()):
        self.port_sets = port_sets
        self.params = params

    def ports_for(self, state: IpState) -> PortSet:
        """Every IP is scanned with the standard set."""
        return self.port_sets.standard

    def start(self, now: float) -> tuple[IpState, ScanPlan]:
        """First scan now with the standard set."""
        return IpState(), ScanPlan(now, self.port_sets.standard, Reason.INITIAL)

    def decide(self, state: IpState | None, obs: Observation, now: float, ip=None) -> tuple[IpState, ScanPlan]:
        """Track responsiveness (for reporting) and scan again in 12 h whatever was seen."""
        state = state or IpState()
        at = now + self.params.standard_interval
        if not obs.complete and not obs.open_ports:
            return state, ScanPlan(at, self.port_sets.standard, Reason.BACKOFF)
        if obs.open_ports:
            digests = port_digests(obs.banners)
            changed = (not state.responsive or state.open_ports != obs.open_ports
                       or _digests_differ(state.digests, digests))
            new = IpState(IpStatus.RESPONSIVE_UNESTIMATED, 0, obs.open_ports, digests, None, 0.0,
                          self.port_sets.standard.ref, 0, state.scans + 1,
                          state.first_seen if state.first_seen is not None else now, now, now,
                          now if changed else state.last_changed)
            reason = Reason.NEW_RESPONDER if not state.responsive else (Reason.CHANGED if changed else Reason.BACKOFF)
            return new, ScanPlan(at, self.port_sets.standard, reason, changed)
        new = IpState(IpStatus.NON_RESPONSIVE, 0, frozenset(), (), None, 0.0, self.port_sets.standard.ref,
                      state.silent_rounds + 1, state.scans + 1, state.first_seen, state.last_seen, now,
                      now if state.responsive else state.last_changed)
        return new, ScanPlan(at, self.port_sets.standard, Reason.SWEEP, state.responsive)


def recall_set(ports: Iterable[int]) -> PortSet:
    """The inline port set of a recall probe (``PolicyParams.recall_interval``)."""
    return PortSet.inline(ports, label="recall")


def _digests_differ(old: tuple[tuple[int, str], ...], new: tuple[tuple[int, str], ...]) -> bool:
    if not old or not new:
        return False
    before = dict(old)
    return any(before.get(p, d) != d for p, d in new)


def _with(state: IpState, **changes) -> IpState:
    values = {name: getattr(state, name) for name in IpState.__slots__}
    values.update(changes)
    return IpState(**values)


def ladder_steps(params: PolicyParams, horizon: float) -> list[float]:
    """Scan times in ``[0, horizon)`` of a responsive IP whose answer never changes, first at 0."""
    times, t, step = [], 0.0, 0
    while t < horizon:
        times.append(t)
        t += params.ladder[min(step, len(params.ladder) - 1)]
        step += 1
    return times
