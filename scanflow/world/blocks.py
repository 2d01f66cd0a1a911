"""Where the hosts sit: /24 blocks of kinds with their own mix and a heavy-tailed density.

Real address space is not uniform: hosts cluster in a minority of prefixes, and which prefixes hold
hosts is stable over months (TASS, Klick et al., "Towards better internet citizenship: reducing the
footprint of internet-wide scans by topology aware prefix selection", IMC 2016: over 28 full IPv4
scans, scanning only the prefixes that held hosts cut traffic by 25-90 % for 1-10 % of hosts missed).
With ``WorldConfig.blocks`` the addresses of a world are cut into /24 blocks (256 consecutive address
indices), each block gets a kind and a density, and every class of host (static, dynamic, sporadic,
honeypot; their counts are fixed by the class shares) is placed on addresses drawn with probability
proportional to its affinity for the block's kind times the block's density (weighted sampling
without replacement, so a dense block fills up and its hosts spill to the next densest). Only *where*
hosts sit changes: the class sizes, hence the responsive fraction and the class shares, are exactly
those of the uniform placement.

Block kinds, their share of /24s and the classes they hold (all *assumptions*, chosen to look like an
ISP's address plan, not measured):

===========  ======  ===============================================================================
kind         share   holds
===========  ======  ===============================================================================
empty        0.55    nothing answers (unused, firewalled, or customers whose CPE answers nothing)
residential  0.18    the dynamic pools (DHCP/PPPoE), some sporadic devices, a few static ones
business     0.10    static devices (offices, shops, fixed-IP customers)
mobile       0.10    sporadic devices (phones and mobile routers on-line now and then), a few static
hosting      0.07    static servers and the honeypots
===========  ======  ===============================================================================

A block's density is lognormal (sigma ``DENSITY_SIGMA``), so a few blocks are full and many hold a
handful of hosts. ``blocks=False`` places every class uniformly at random (the world before blocks).
"""

from __future__ import annotations

import numpy as np

BLOCK_SIZE = 256
EMPTY, RESIDENTIAL, BUSINESS, MOBILE, HOSTING = range(5)
BLOCK_KIND_NAMES = ("empty", "residential", "business", "mobile", "hosting")
#: Share of /24 blocks of each kind (*assumption*).
BLOCK_KIND_SHARES = np.array([0.55, 0.18, 0.10, 0.10, 0.07])
#: Affinity of each host class (rows: static, dynamic, sporadic, honeypot) for each block kind
#: (columns as ``BLOCK_KIND_NAMES``); relative weights per class (*assumption*).
CLASS_AFFINITY = np.array([
    [0.0, 0.10, 1.00, 0.10, 1.00],   # static
    [0.0, 1.00, 0.00, 0.00, 0.00],   # dynamic: the ISPs' pools
    [0.0, 0.40, 0.00, 1.00, 0.00],   # sporadic
    [0.0, 0.00, 0.00, 0.00, 1.00],   # honeypot
])
#: Spread of the lognormal block density (*assumption*): a few dense /24s, many sparse ones.
DENSITY_SIGMA = 1.5
#: Classes are placed in this order (the small, block-bound classes first).
PLACEMENT_ORDER = (3, 1, 0, 2)


def block_kinds(rng: np.random.Generator, n_ips: int) -> np.ndarray:
    """The kind of each /24 block of a world of ``n_ips`` addresses."""
    n_blocks = -(-n_ips // BLOCK_SIZE)
    return rng.choice(len(BLOCK_KIND_SHARES), n_blocks, p=BLOCK_KIND_SHARES).astype(np.int8)


def place_classes(rng: np.random.Generator, n_ips: int, sizes: np.ndarray) -> np.ndarray:
    """Addresses for ``sizes[c]`` hosts of each class ``c`` (static, dynamic, sporadic, honeypot),
    concatenated in class order, all distinct: the same layout as a uniform draw, clustered in
    blocks."""
    kinds = block_kinds(rng, n_ips)
    density = rng.lognormal(0.0, DENSITY_SIGMA, len(kinds))
    block_of = np.arange(n_ips, dtype=np.int64) // BLOCK_SIZE
    taken = np.zeros(n_ips, dtype=bool)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(sizes)
    for cls in PLACEMENT_ORDER:
        n = int(sizes[cls])
        if n == 0:
            continue
        weight = (CLASS_AFFINITY[cls][kinds] * density)[block_of]
        # Efraimidis-Spirakis: the n largest u**(1/w) are a weighted sample without replacement; a
        # tiny floor lets a class spill anywhere if its blocks are full (small worlds)
        key = np.log(rng.random(n_ips)) / (weight + 1e-12)
        key[taken] = -np.inf
        chosen = np.argpartition(-key, n - 1)[:n]
        taken[chosen] = True
        out[cls] = np.sort(chosen).astype(np.int64)
    return np.concatenate(out)
