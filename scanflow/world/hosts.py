"""Host profiles: what one device instance has open and what each open port says.

A profile is one kind of device set-up (a camera model with its services, a mail server, a honeypot);
the world's device instances point to profiles and carry their own instance token (host names in
banners), so that the customers' routers rotating through a dynamic address pool can share a few
set-ups while still being different devices. Profiles are stored column-wise
in compressed-sparse-row form (:class:`HostProfiles`): per profile its kind, knowledge-base model,
keyword pick and instance token; per (profile, port) entry the port, its protocol and its banner choice.
A world refers to profiles from its time segments; the same profile can appear in several segments (a
sporadic device coming back on-line is the same device).

Three kinds:

- ``GENERIC``: a device the knowledge base does not know. Its ports are draws from the popularity law
  (:class:`~scanflow.world.ports.PortPopularity`), then (``WorldConfig.stacks``) re-paired among the
  generic hosts so that most of them run a software stack whose ports sit together
  (:func:`stack_ports`); banners name generic software.
- ``KNOWN``: a model of the knowledge base. Its own ports (each kept with ``known_port_keep``) carry
  the model's keywords in their banners; a few extra ports come from the popularity law.
- ``HONEYPOT``: >= ``honeypot_min_ports`` ports uniformly at random (log-uniform count); banners only on
  ports with a known protocol, SYN-ACK only elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scanflow.knowledge import DeviceModel
from scanflow.world import banners as B
from scanflow.world.config import WorldConfig
from scanflow.world.ports import N_PORTS

GENERIC, KNOWN, HONEYPOT = 0, 1, 2
KIND_NAMES = ("generic", "known", "honeypot")

_OPTION_COUNT = np.array([len(B.GENERIC_SOFTWARE[p]) for p in range(len(B.PROTOCOLS))], dtype=np.int64)
_TALKATIVE = np.array([p in B.TALKATIVE for p in range(len(B.PROTOCOLS))])


@dataclass(frozen=True, eq=False)
class HostProfiles:
    """Device instances in CSR form: entries ``ptr[i]:ptr[i+1]`` are profile ``i``'s open ports,
    ascending, with their ``proto`` (:mod:`scanflow.world.banners` codes) and banner ``choice``."""

    ptr: np.ndarray
    port: np.ndarray
    proto: np.ndarray
    choice: np.ndarray
    kind: np.ndarray
    model: np.ndarray
    keyword: np.ndarray
    token: np.ndarray
    models: tuple[DeviceModel, ...]

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def n_ports(self) -> np.ndarray:
        """Open ports per profile."""
        return np.diff(self.ptr)

    def ports_of(self, i: int) -> np.ndarray:
        """Open ports of profile ``i``, ascending."""
        return self.port[self.ptr[i]:self.ptr[i + 1]]

    def entries_of(self, profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All entries of the given profiles: ``(row, entry)`` with ``row`` the index into
        ``profiles`` each entry belongs to (vectorised CSR gather)."""
        return csr_gather(self.ptr, profiles)

    def keyword_of(self, i: int) -> str | None:
        """The device keyword instance ``i`` shows in its banners (None for unknown devices)."""
        m = int(self.model[i])
        if m < 0:
            return None
        return B.keyword_for(self.models[m].world_keywords, int(self.keyword[i]))

    def banner(self, entry: int, *, profile: int, seed: int, ip: int, t: int, token: int | None = None,
               firmware: int | None = None) -> bytes | None:
        """Render entry ``entry`` (a port of ``profile``) as read by a grabber at time ``t``; ``token``
        names the device instance (default: the profile's own), ``firmware`` the number of firmware
        updates it has had (None: no version shown)."""
        return B.render(int(self.proto[entry]), int(self.choice[entry]), keyword=self.keyword_of(profile),
                        token=int(self.token[profile] if token is None else token), seed=seed, ip=ip,
                        port=int(self.port[entry]), t=t, firmware=firmware)


def csr_gather(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR offsets ``ptr`` and selected ``rows``: ``(i, position)`` for every element of every
    selected row, ``i`` indexing ``rows``, in row order (vectorised, no Python loop)."""
    rows = np.asarray(rows, dtype=np.int64)
    start = ptr[rows]
    count = ptr[rows + 1] - start
    i = np.repeat(np.arange(len(rows), dtype=np.int64), count)
    first = np.repeat(np.cumsum(count) - count, count)
    return i, np.repeat(start, count) + (np.arange(len(i), dtype=np.int64) - first)


#: Software stacks: ports that one kind of installation opens together (*assumption*: this project's
#: common-knowledge bundles, not measured data). Generic hosts running a stack get their ports
#: re-paired towards the stack's members (see :func:`stack_ports`).
STACKS: tuple[tuple[int, ...], ...] = (
    (25, 110, 143, 465, 587, 993, 995),      # mail server: SMTP, submission, POP3, IMAP (+ TLS)
    (80, 443, 8080, 8443, 8081, 8888),       # web server / reverse proxy
    (21, 139, 445, 548, 5000, 5001),         # NAS: FTP, SMB, AFP, the admin web UI
    (22, 23, 3389, 5900),                    # remote administration
    (80, 554, 8000, 37777),                  # IP camera / DVR: web UI, RTSP, vendor media ports
    (7547, 1900, 80, 23),                    # home gateway: TR-069, UPnP, web UI, telnet
    (515, 631, 9100),                        # printer: LPD, IPP, raw printing
    (1433, 3306, 5432, 6379),                # database server
    (53, 22, 80, 443),                       # DNS / hosting box
    (21, 22, 23, 80, 1723, 2000, 8291, 8728),  # small-office router: its management services, VPN
    (135, 139, 445, 3389),                   # Windows server: RPC, SMB, remote desktop
    (5060, 5061, 2000),                      # VoIP: SIP (+ TLS), SCCP
    (22, 111, 2049),                         # Unix file server: SSH, portmapper, NFS
    (1883, 8883),                            # IoT message broker: MQTT (+ TLS)
)
#: Only the *movable* ports are re-paired: the head and body ranks of the popularity law drawn at least
#: this many times as often as the most popular tail port (the law's body falls below its tail's start,
#: so without the margin a survey would rank some tail ports among them). Every host keeps as many of
#: them as it had, and a survey ranks them all first, so the device-detection curve (share of hosts
#: with a port among the survey's top k) is unchanged for every k past them: the silent set is too.
STACK_MARGIN = 1.5


def movable_ranks(popularity) -> int:
    """How many top ranks of ``popularity`` stacks may re-pair (see ``STACK_MARGIN``): 142 for the
    default law."""
    w = popularity.rank_shares()
    bound = STACK_MARGIN * w[popularity.body_end - 1:].max()
    return int(np.argmax(w < bound)) if (w < bound).any() else len(w)


def stack_ports(rng: np.random.Generator, owner: np.ndarray, port: np.ndarray, n_hosts: int,
                share: float, popularity) -> np.ndarray:
    """Re-pair independently drawn ports so that co-occurring services sit on one host.

    ``owner``/``port`` are the distinct draws of ``n_hosts`` generic hosts. A ``share`` of the hosts
    with >= 2 ports and a port of some bundle run a stack: their least popular bundle port is the
    anchor (a port in several bundles picks one of them at random). The *movable* ports (the top
    :func:`movable_ranks`, anchors excluded) of all generic hosts form one pool of values dealt back to
    the same slots: a host running a stack first gets missing members of its bundle (in a random order
    weighted by the square of their popularity, popular members first, as long as the pool holds
    them), every other slot a random value of what is left; a value a host would hold twice is then
    traded with a random other dealt slot until no host does. So every host keeps its number of ports
    (and of movable ones) and every port its number of hosts: Table 1, the standard, silent and
    unknown-device sets are exactly those of the independent draw. Returns the new ``port`` (same
    order as ``owner``).
    """
    owner = np.asarray(owner, dtype=np.int64)
    port0 = np.asarray(port, dtype=np.int64)
    port = port0.copy()
    if len(port) == 0 or share <= 0:
        return port.astype(np.int32)
    W = N_PORTS + 1
    rank = np.empty(W, dtype=np.int64)
    rank[0] = W
    rank[popularity.ranked_ports()] = np.arange(1, N_PORTS + 1)
    top = movable_ranks(popularity)
    weight = popularity.port_shares()
    st_id = np.concatenate([np.full(len(s), i) for i, s in enumerate(STACKS)])
    st_port = np.concatenate([np.array(s) for s in STACKS])
    sizes = np.array([len(s) for s in STACKS])
    offs = np.concatenate([[0], np.cumsum(sizes)])
    n_of = np.bincount(st_port, minlength=W)      # bundles each port belongs to
    in_stack = n_of[port] > 0
    count = np.bincount(owner, minlength=n_hosts)
    candidate = (count >= 2) & (np.bincount(owner, weights=in_stack, minlength=n_hosts) > 0)
    runs = candidate & (rng.random(n_hosts) < share)
    # anchor: the least popular bundle port of each running host (ties impossible: distinct ports)
    key = np.where(in_stack & runs[owner], rank[port].astype(np.float64), -1.0)
    order = np.lexsort((-key, owner))
    first = np.ones(len(order), dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    anchor_slot = order[first & (key[order] >= 0)]
    a_host, a_port = owner[anchor_slot], port[anchor_slot]
    by_port = np.argsort(st_port, kind="stable")
    start = np.concatenate([[0], np.cumsum(n_of)])[a_port]
    host_stack = np.full(n_hosts, -1, dtype=np.int64)
    host_stack[a_host] = st_id[by_port[start + (rng.random(len(a_port)) * n_of[a_port]).astype(np.int64)]]

    pool = rank[port] <= top
    pool[anchor_slot] = False
    fixed_code = np.sort(owner[~pool] * W + port[~pool])
    slots = np.flatnonzero(pool)                          # by owner
    values = port[slots]
    q = np.bincount(owner[slots], minlength=n_hosts)      # pool slots per host
    # requests: members of each running host's bundle it does not hold in a fixed slot, movable,
    # in a popularity-weighted random order, as many as it has pool slots
    hosts_r = np.flatnonzero((host_stack >= 0) & (q > 0))
    k = sizes[host_stack[hosts_r]]
    r_host = np.repeat(hosts_r, k)
    first_r = np.repeat(np.cumsum(k) - k, k)
    r_port = st_port[np.repeat(offs[host_stack[hosts_r]], k) + np.arange(len(r_host)) - first_r]
    c = r_host * W + r_port
    held = fixed_code[np.minimum(np.searchsorted(fixed_code, c), max(len(fixed_code) - 1, 0))] == c \
        if len(fixed_code) else np.zeros(len(c), dtype=bool)
    ok = ~held & (rank[r_port] <= top)
    r_host, r_port = r_host[ok], r_port[ok]
    o = np.lexsort((-np.log(rng.random(len(r_host))) / weight[r_port] ** 2, r_host))
    r_host, r_port = r_host[o], r_port[o]
    keep = _cumcount(r_host) < q[r_host]
    r_host, r_port = r_host[keep], r_port[keep]
    # grant per port up to the pool's supply, random priority
    supply = np.bincount(values, minlength=W)
    o = np.lexsort((rng.random(len(r_port)), r_port))
    r_host, r_port = r_host[o], r_port[o]
    granted = _cumcount(r_port) < supply[r_port]
    g_host, g_port = r_host[granted], r_port[granted]
    # granted values fill the first slots of each host; the rest of the pool is dealt at random
    o = np.argsort(g_host, kind="stable")
    g_host, g_port = g_host[o], g_port[o]
    n_g = np.bincount(g_host, minlength=n_hosts)
    s_i = _cumcount(owner[slots])
    gets = s_i < n_g[owner[slots]]
    new_values = np.empty(len(slots), dtype=np.int64)
    new_values[gets] = g_port                             # both by (host, i)
    left = np.repeat(np.arange(W), supply - np.bincount(g_port, minlength=W))
    free = np.flatnonzero(~gets)
    new_values[free] = left[rng.permutation(len(left))]
    port[slots] = new_values
    for _ in range(200 if len(free) else 0):
        code = owner * W + port
        srt = np.sort(code)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if len(dup) == 0:
            return port.astype(np.int32)
        # move each doubled dealt value to a random dealt slot of another host, taking that slot's
        # value, where neither host holds the value it gets; a host in one move per pass
        bad = slots[free[np.isin(code[slots[free]], dup)]]
        other = slots[free[rng.integers(0, len(free), len(bad))]]
        hb, hp = owner[bad], owner[other]
        ok = (hb != hp) & ~_holds(srt, hb * W + port[other]) & ~_holds(srt, hp * W + port[bad])
        bad, other, hb, hp = bad[ok], other[ok], hb[ok], hp[ok]
        both = np.concatenate([hb, hp])
        _, first_at = np.unique(both, return_index=True)
        once = np.zeros(len(both), dtype=bool)
        once[first_at] = True
        keep = once[:len(bad)] & once[len(bad):]
        bad, other = bad[keep], other[keep]
        port[bad], port[other] = port[other], port[bad].copy()
    return port0.astype(np.int32)  # no valid deal found (never seen): keep the independent draw


def _holds(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Whether each of ``codes`` is in ``sorted_codes``."""
    if len(sorted_codes) == 0:
        return np.zeros(len(codes), dtype=bool)
    i = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return sorted_codes[i] == codes


def _cumcount(keys: np.ndarray) -> np.ndarray:
    """Position of each element among the equal keys before it (``keys`` sorted)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.ones(n, dtype=bool)
    start[1:] = keys[1:] != keys[:-1]
    idx = np.arange(n)
    return idx - np.maximum.accumulate(np.where(start, idx, 0))


def make_profiles(rng: np.random.Generator, kinds: np.ndarray, config: WorldConfig,
                  models: Sequence[DeviceModel]) -> HostProfiles:
    """Draw one profile per element of ``kinds`` (``GENERIC``/``KNOWN``/``HONEYPOT``)."""
    kinds = np.asarray(kinds, dtype=np.int8)
    n = len(kinds)
    if len(models) == 0:
        kinds = np.where(kinds == KNOWN, GENERIC, kinds).astype(np.int8)
    owners, ports, own = [], [], []

    generic = np.flatnonzero(kinds == GENERIC)
    if len(generic):
        draws = rng.geometric(1.0 / config.generic_port_draws, len(generic))
        o, p = config.ports.sample(rng, draws)
        if config.stacks:
            # a stream of its own, derived from the main one's seed without drawing from it: with or
            # without stacks every other draw of the world is the same
            seq = rng.bit_generator.seed_seq
            srng = np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, 0x57AC5)))
            p = stack_ports(srng, o, p, len(generic), config.stack_share, config.ports)
        owners.append(generic[o]); ports.append(p); own.append(np.zeros(len(p), dtype=bool))

    model = np.full(n, -1, dtype=np.int16)
    known = np.flatnonzero(kinds == KNOWN)
    if len(known):
        # entries the estimator can never name from a device's own banners (weak generic evidence
        # such as a lighttpd Server header) are not devices of their own in the simulation; model
        # numbers stay indices into ``models``
        drawable = np.array([i for i, m in enumerate(models) if m.world_keywords] or [0], dtype=np.int64)
        model[known] = drawable[rng.integers(0, len(drawable), len(known))]
        mports = [np.array(sorted(m.ports), dtype=np.int32) for m in models]
        sizes = np.array([len(mp) for mp in mports])
        flat = np.concatenate(mports)
        offs = np.concatenate([[0], np.cumsum(sizes)])
        m = model[known].astype(np.int64)
        row = np.repeat(np.arange(len(known)), sizes[m])
        first = np.repeat(np.cumsum(sizes[m]) - sizes[m], sizes[m])
        kp = flat[np.repeat(offs[m], sizes[m]) + np.arange(len(row)) - first]
        keep = rng.random(len(row)) < config.known_port_keep
        # at least one own port survives: force the first of every device that lost them all
        kept_any = np.bincount(row, weights=keep, minlength=len(known)) > 0
        keep[np.cumsum(sizes[m]) - sizes[m]] |= ~kept_any
        owners.append(known[row[keep]]); ports.append(kp[keep]); own.append(np.ones(int(keep.sum()), dtype=bool))
        extra = rng.poisson(config.known_extra_ports, len(known))
        if extra.sum():
            o, p = config.ports.sample(rng, extra)
            owners.append(known[o]); ports.append(p); own.append(np.zeros(len(p), dtype=bool))

    honey = np.flatnonzero(kinds == HONEYPOT)
    if len(honey):
        lo, hi = np.log(config.honeypot_min_ports), np.log(config.honeypot_max_ports)
        counts = np.round(np.exp(rng.uniform(lo, hi, len(honey)))).astype(np.int64)
        counts = np.clip(counts, config.honeypot_min_ports, config.honeypot_max_ports)
        for h, c in zip(honey, counts):
            p = rng.choice(65535, int(c), replace=False).astype(np.int32) + 1
            owners.append(np.full(len(p), h, dtype=np.int64)); ports.append(p); own.append(np.zeros(len(p), dtype=bool))

    if owners:
        owner = np.concatenate(owners).astype(np.int64)
        port = np.concatenate(ports).astype(np.int32)
        is_own = np.concatenate(own)
    else:
        owner, port, is_own = np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
    # sort by (owner, port, own first) and drop duplicate ports, keeping the model's own entry
    order = np.lexsort((~is_own, port, owner))
    owner, port, is_own = owner[order], port[order], is_own[order]
    first = np.ones(len(owner), dtype=bool)
    first[1:] = (owner[1:] != owner[:-1]) | (port[1:] != port[:-1])
    owner, port, is_own = owner[first], port[first], is_own[first]

    proto = B.PORT_PROTOCOL[port]
    choice = (rng.random(len(port)) * _OPTION_COUNT[proto]).astype(np.int16)
    silent = ~_TALKATIVE[proto] & (rng.random(len(port)) >= config.raw_banner_share)
    silent |= (kinds[owner] == HONEYPOT) & ~_TALKATIVE[proto]
    choice[silent] = B.NO_BANNER
    choice[is_own] = B.KEYWORD
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=ptr[1:])
    return HostProfiles(ptr=ptr, port=port, proto=proto.astype(np.int8), choice=choice, kind=kinds,
                        model=model, keyword=rng.integers(0, 256, n).astype(np.int16),
                        token=rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32),
                        models=tuple(models))


def draw_kinds(rng: np.random.Generator, n: int, known_share: float) -> np.ndarray:
    """Kinds of ``n`` non-honeypot devices: ``KNOWN`` with probability ``known_share``."""
    return np.where(rng.random(n) < known_share, KNOWN, GENERIC).astype(np.int8)
