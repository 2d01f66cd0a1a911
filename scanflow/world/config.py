"""Every parameter of the synthetic internet, with where its value comes from.

``docs/WORLD.md`` is the long form of this table; ``tests/unit/test_calibration*.py`` measure each
paper-sourced quantity on a generated world. Values marked *assumption* are not given by the paper:
they are this project's choices, documented so that a reader can vary them (``scanflow evaluate
--world KEY=VALUE``) and see how much a result depends on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from scanflow.world.ports import PortPopularity

HOUR = 3600.0
DAY = 24 * HOUR


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of a synthetic internet (addresses, devices, ports, banners, dynamics).

    Shares named ``*_share`` are of the hosts answering at one instant ("responsive at a time"),
    the population the paper's fixed-point observation followed.
    """

    #: Addresses in the world.
    n_ips: int = 100_000
    #: Share of addresses answering at any instant. Paper: 2.7 % (Dec 2018 full-port scan), 2.30 %
    #: (Apr 2019 national scan); the middle of the two.
    responsive_fraction: float = 0.025
    #: Share with >= 100 open ports (honeypots, pseudo-services answering every SYN). Issue 5 (~0.2 %);
    #: the paper only says such IPs exist and drops them from the standard-set derivation.
    honeypot_share: float = 0.002
    #: Share on dynamically assigned addresses (DHCP/PPPoE/mobile pools): the occupant changes.
    #: Fitted, with ``static_tenure_days`` and ``sporadic_share``, to the paper's Table 4 PDR under its
    #: conditions (desynchronised scans, loss 0.01: 2 weeks 94.9-96.5 %, 8 weeks 94.3 %, the 8-week
    #: figure *below* the 2-week ones, which only static churn produces) while ~70 % stay unchanged.
    dynamic_share: float = 0.20
    #: Share that answers only sporadically (a device on-line now and then). Fitted to Table 4's
    #: 2-week PDR, which caps it near 0.25 % (each further 0.25 % costs 0.5-0.7 points); the pre-
    #: calibration 12.5 % (scenario ``sporadic-heavy``) gives the paper's own method ~81 % PDR.
    sporadic_share: float = 0.0025
    # The remaining share (~80 %) sits on static addresses. With ``static_tenure_days`` it makes the
    # paper's "~70 % unchanged over 3 weeks" (fixed-point observation, Jan-Feb 2019).

    #: Mean time (days) a device stays on a static address before it leaves or is replaced. Fitted
    #: with the static share to the paper's ~70 % unchanged in 3 weeks (0.70 ~ 0.797 x e^(-21/170))
    #: and to Table 4's 8-week PDR falling below the 2-week one (static replacements on backed-off
    #: addresses are what the efficient scan finds late).
    static_tenure_days: float = 170.0
    #: Share of static departures immediately followed by another device (replacement). *Assumption*.
    static_replace_fraction: float = 0.9
    #: Mean time (days) a static address stays empty before a new device appears. *Assumption*.
    static_vacancy_days: float = 30.0
    #: Mean lease (hours) of an occupant of a dynamic address; leases are memoryless, so in 12 h
    #: rounds the most frequent change interval is 12 h, as the paper observed. *Assumption* (1 day).
    dynamic_lease_hours: float = 24.0
    #: Device set-ups rotating through one dynamic address: its occupants are different devices (own
    #: host names) of this many kinds (an ISP pool's customers mostly run the same few routers). 0 =
    #: every occupant an independent draw. *Assumption*.
    dynamic_pool_types: int = 4
    #: Share of the dynamic (pooled) devices that, when their lease ends, reappear at another address
    #: of the same pool (the dynamic addresses of their /24) as the same device (profile, host name,
    #: fingerprint), at the next lease that ends there; the rest leave the pool. The address they left
    #: gets its next occupant as before. Residential addresses are renumbered inside the ISP's pools,
    #: but the share that stays on-line through a renumbering is not measured: *assumption* (a half).
    #: 0 = nobody moves.
    pool_move_share: float = 0.5
    #: Mean length (hours) of one on-line episode of a sporadic responder. *Assumption*: the paper's
    #: Table 3 shows isolated answers, so episodes are shorter than a 12 h round on average.
    sporadic_on_hours: float = 18.0
    #: Share of time a sporadic responder is on-line. Fitted so that the paper's statistic, answers
    #: in 2 weeks of 12 h rounds by IPs answering < 80 % of rounds, measures 3.45 (about once in 4 days).
    sporadic_duty: float = 0.08

    #: Addresses live in /24 blocks (256 consecutive indices) of kinds with their own mix of classes
    #: (residential pools, business, mobile, hosting, empty) and a heavy-tailed density, so most
    #: answering hosts sit in a minority of the /24s, a set stable over months (TASS, Klick et al.
    #: 2016: over 28 full IPv4 scans, scanning only the prefixes with hosts cuts traffic 25-90 % for
    #: 1-10 % of hosts missed). The class shares and the responsive fraction are unchanged; only where
    #: the hosts sit. The block kinds' shares and mixes are *assumptions* (``blocks.py``). False =
    #: uniform placement.
    blocks: bool = True

    #: Share of devices that are models of the knowledge base (banners carry their keywords); the rest
    #: are devices it does not know. Fitted so that the estimator recognises the model of ~3 % of the
    #: responsive IPs (paper: only ~3 % are estimable, [10] and Table 5); some keywords are shared by
    #: sibling models, so slightly more than 3 % must be known.
    known_share: float = 0.035
    #: Share of a known model's own ports that a device instance has open (at least one is kept).
    known_port_keep: float = 0.85
    #: Mean number of extra ports, drawn from the popularity law, on a known device. *Assumption*.
    known_extra_ports: float = 0.5
    #: Mean number of port draws for a device the knowledge base does not know (geometric, >= 1).
    #: Fitted with the popularity law to the paper's port-set sizes (11,000 / 500 / 5,100).
    generic_port_draws: float = 3.1
    #: Software stacks: services that co-occur on one host (GPS, Izhikevich et al. 2022: a host's
    #: services predict each other). A share ``stack_share`` of the generic hosts run one of a few
    #: bundles (mail, web, NAS, camera, gateway, router, database, ...: *assumptions*, ``hosts.STACKS``);
    #: the independently drawn ports of the generic hosts are re-paired among them so the bundles'
    #: members sit together, keeping every host's port count and every port's host count (so Table 1
    #: and the port sets). False = independent draws.
    stacks: bool = True
    #: Share of the eligible generic hosts (>= 2 ports, one of them in a bundle) that run a stack.
    #: *Assumption*: 0.9 gives about the largest co-occurrence (a top-5 ranking given one open port
    #: finds ~15 points more of a host's other ports than the plain one; 0.6: ~9, 1.0: ~13.5, too few
    #: hosts left to take the ports the stacks do not want).
    stack_share: float = 0.9
    #: Mean time (days) between firmware updates of a device of the knowledge base: the version in its
    #: banners changes (so its fingerprint does), its model does not. *Assumption* (about twice a
    #: year); 0 = never.
    firmware_update_days: float = 180.0
    #: Probability that a service on a port without a known protocol says something on connect.
    raw_banner_share: float = 0.3
    #: Honeypot open-port counts are log-uniform in [min, max]; ports uniformly random.
    honeypot_min_ports: int = 100
    honeypot_max_ports: int = 65535
    #: The port popularity law (Table 1 head; fitted tail).
    ports: PortPopularity = field(default_factory=PortPopularity)
    #: Probability that one probe of one port is lost (SYN or SYN-ACK); 0 = the synchronised,
    #: loss-free world the paper wanted its simulator to be.
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.n_ips < 1 or self.n_ips >= 1 << 32:
            raise ValueError(f"n_ips must be in 1 .. 2**32-1, got {self.n_ips}")
        if not 0 < self.responsive_fraction < 1:
            raise ValueError(f"responsive_fraction must be in (0, 1), got {self.responsive_fraction}")
        shares = (self.honeypot_share, self.dynamic_share, self.sporadic_share)
        if any(s < 0 for s in shares) or sum(shares) >= 1:
            raise ValueError("honeypot_share + dynamic_share + sporadic_share must be >= 0 and < 1")
        for name in ("static_tenure_days", "static_vacancy_days", "dynamic_lease_hours", "sporadic_on_hours",
                     "generic_port_draws"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.generic_port_draws < 1:
            raise ValueError("generic_port_draws is a mean of draws >= 1")
        if self.firmware_update_days < 0:
            raise ValueError(f"firmware_update_days must be >= 0 (0 = never), got {self.firmware_update_days}")
        for name in ("static_replace_fraction", "known_share", "known_port_keep", "raw_banner_share", "loss",
                     "pool_move_share", "stack_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.sporadic_duty < 1:
            raise ValueError(f"sporadic_duty must be in (0, 1), got {self.sporadic_duty}")
        if not 1 <= self.honeypot_min_ports <= self.honeypot_max_ports <= 65535:
            raise ValueError("need 1 <= honeypot_min_ports <= honeypot_max_ports <= 65535")
        needed = self.responsive_fraction * (self.static_share / self.static_occupancy
                                             + self.sporadic_share / self.sporadic_duty
                                             + self.dynamic_share + self.honeypot_share)
        if needed > 1:
            raise ValueError(f"the classes need {needed:.0%} of the addresses; lower responsive_fraction, "
                             "sporadic_share or raise sporadic_duty")

    @property
    def static_share(self) -> float:
        """Share of responsive-at-a-time hosts on static addresses (the rest of the classes)."""
        return 1.0 - self.honeypot_share - self.dynamic_share - self.sporadic_share

    @property
    def static_occupancy(self) -> float:
        """Long-run share of time a static address has a device."""
        tenure = self.static_tenure_days
        return tenure / (tenure + (1 - self.static_replace_fraction) * self.static_vacancy_days)

    def replace(self, **changes: Any) -> "WorldConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, items: Mapping[str, str]) -> "WorldConfig":
        """A copy with ``{"field": "text value"}`` overrides parsed to each field's type (for the CLI)."""
        changes: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(self)}
        for key, text in items.items():
            if key not in fields or key == "ports":
                known = ", ".join(sorted(k for k in fields if k != "ports"))
                raise ValueError(f"unknown world parameter {key!r}; known: {known}")
            kind = type(getattr(self, key))
            try:
                if kind is bool:
                    changes[key] = _parse_bool(text)
                else:
                    changes[key] = kind(float(text)) if kind is int else kind(text)
            except ValueError:
                raise ValueError(f"world parameter {key}: {text!r} is not a {kind.__name__}") from None
        return self.replace(**changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters (the port law flattened under ``ports``)."""
        out = dataclasses.asdict(self)
        out["ports"] = dataclasses.asdict(self.ports)
        return out


def _parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); ``bool("false")`` would be True."""
    word = str(text).strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise ValueError(word)


#: The Dec 2018 full-port scan the paper derived its port sets from: ~12 M addresses, 328,240 (2.7 %)
#: responsive. The survey world uses the same internet at this size and response rate.
SURVEY_IPS = 12_157_037
SURVEY_RESPONSIVE_FRACTION = 0.027
