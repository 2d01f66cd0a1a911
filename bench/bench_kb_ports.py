"""How many ports an estimated device is scanned on next, over the devices of a synthetic world.

For every device instance of the knowledge base in a generated world (profiles of kind KNOWN), the
banners of its open ports are rendered as a grabber reads them at time 0 and estimated; the script
prints the share estimated, the share estimated as the model the world gave it (the simulator and
the estimator share one knowledge), and the mean/median/max size of the next scan's port set, over
estimated devices (the paper: 1 to 28 ports, 2.2 on average).

    PYTHONPATH=. python bench/bench_kb_ports.py [--ips 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.world.config import WorldConfig
from scanflow.world.hosts import KNOWN
from scanflow.world.model import World


def measure(n_ips: int, seed: int) -> dict[str, float]:
    kb = load_knowledge()
    world = World.generate(WorldConfig(n_ips=n_ips), seed=seed, horizon_days=14, kb=kb)
    profiles = world.profiles
    # every device instance counts: a profile shared by many devices (the routers of an address
    # pool) weighs as many
    weight = np.bincount(np.asarray(world.device_profile, dtype=np.int64), minlength=len(profiles))
    est = Estimator(kb)
    sizes: list[int] = []
    known = right = vendor_right = 0
    for i in range(len(profiles)):
        if profiles.kind[i] != KNOWN or weight[i] == 0:
            continue
        w = int(weight[i])
        known += w
        start, end = int(profiles.ptr[i]), int(profiles.ptr[i + 1])
        banners = {}
        for entry in range(start, end):
            data = profiles.banner(entry, profile=i, seed=seed, ip=i, t=0)
            if data:
                banners[int(profiles.port[entry])] = data
        e = est.estimate(frozenset(int(p) for p in profiles.port[start:end]), banners)
        if e.estimated:
            sizes.extend([len(e.ports)] * w)
            want = profiles.models[int(profiles.model[i])]
            right += w * (e.model == want.id)
            vendor_right += w * (getattr(e, "vendor", None) == want.vendor
                                 or kb.device(e.model).vendor == want.vendor)
    return {"known_devices": known, "estimated": len(sizes) / known if known else 0.0,
            "as_its_model": right / known if known else 0.0, "its_vendor": vendor_right / known if known else 0.0,
            "mean_ports": statistics.mean(sizes) if sizes else 0.0,
            "median_ports": statistics.median(sizes) if sizes else 0.0, "max_ports": max(sizes, default=0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ips", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.ips < 100:
        print("--ips must be at least 100", file=sys.stderr)
        return 2
    r = measure(args.ips, args.seed)
    print(f"{r['known_devices']} known devices in a {args.ips:,}-address world (seed {args.seed}): "
          f"estimated {r['estimated']:.1%}, as the world's model {r['as_its_model']:.1%}, its vendor "
          f"{r['its_vendor']:.1%}; next scan ports per estimated device: mean {r['mean_ports']:.2f}, "
          f"median {r['median_ports']:g}, max {r['max_ports']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
