"""Device estimation rate on synthetic hosts: ``python bench/bench_estimate.py [--hosts 1000000]``.

Each host has 1-4 open ports and a banner on each of 1-2 of them. Banners are drawn from device
banners built from the knowledge base's own keywords (with the volatile parts a real scan shows:
dates, cookies, counters), generic server banners, and random bytes. Two runs are timed:

- ``pooled``: banners come from a pool of a few thousand distinct strings, as in a real scan where
  the same firmware answers identically on many hosts (the estimator's per-banner memo helps);
- ``unique``: every banner carries a fresh nonce, so no banner is ever seen twice (worst case).

Generation is not timed. Prints hosts/s for each run and the share of hosts estimated.
"""

from __future__ import annotations

import argparse
import random
import time

from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge

GENERIC = [b"HTTP/1.1 200 OK\r\nServer: nginx/1.%d.0\r\nDate: Mon, 0%d Jan 2024 10:00:00 GMT\r\n\r\n",
           b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.%d (Unix)\r\nSet-Cookie: s=%d\r\n\r\n",
           b"SSH-2.0-OpenSSH_%d.%dp1\r\n", b"220 mail%d.example.jp ESMTP Postfix %d\r\n",
           b"220 ProFTPD 1.3.%d Server ready, user %d\r\n", b"+OK Dovecot ready %d %d\r\n"]
COMMON_PORTS = [21, 22, 23, 25, 80, 110, 143, 443, 587, 993, 995, 3389, 7547, 8080, 8443]


def make_banner_factory(kb, rng: random.Random):
    keywords = [(d, kw) for d in kb.devices for kw in d.keywords]

    def device_banner(nonce: int) -> tuple[int, bytes]:
        device, kw = rng.choice(keywords)
        port = rng.choice(sorted(device.ports))
        text = (f"HTTP/1.1 200 OK\r\nDate: Tue, {nonce % 28 + 1:02d} Feb 2024 {nonce % 24:02d}:00:00 GMT\r\n"
                f"Server: {kw.title()}/{nonce % 7}.0\r\nSet-Cookie: sid={nonce:x}\r\n\r\n")
        return port, text.encode()

    def generic_banner(nonce: int) -> tuple[int, bytes]:
        template = rng.choice(GENERIC)
        return rng.choice(COMMON_PORTS), template % (nonce % 30, nonce)

    def random_banner(nonce: int) -> tuple[int, bytes]:
        return rng.randrange(1, 65536), rng.randbytes(rng.randrange(1, 300))

    def factory(nonce: int) -> tuple[int, bytes]:
        r = rng.random()
        make = device_banner if r < 0.4 else generic_banner if r < 0.9 else random_banner
        return make(nonce)

    return factory


def make_hosts(kb, n: int, unique: bool, seed: int) -> list[tuple[frozenset[int], tuple[tuple[int, bytes], ...]]]:
    rng = random.Random(seed)
    factory = make_banner_factory(kb, rng)
    pool = [factory(i) for i in range(4000)]
    hosts = []
    for i in range(n):
        banners = tuple(factory(i * 3 + j) if unique else rng.choice(pool) for j in range(rng.randint(1, 2)))
        ports = {p for p, _ in banners}
        ports.update(rng.choice(COMMON_PORTS) for _ in range(rng.randint(0, 2)))
        hosts.append((frozenset(ports), banners))
    return hosts


def run(estimator: Estimator, hosts) -> tuple[float, int]:
    estimate = estimator.estimate
    started = time.perf_counter()
    estimated = 0
    for ports, banners in hosts:
        if estimate(ports, banners).model is not None:
            estimated += 1
    return time.perf_counter() - started, estimated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    kb = load_knowledge()
    print(f"knowledge base {kb.version}: {len(kb.devices)} models, {len(kb.malware)} malware families")
    for mode in ("pooled", "unique"):
        hosts = make_hosts(kb, args.hosts, unique=(mode == "unique"), seed=args.seed)
        estimator = Estimator(kb)
        seconds, estimated = run(estimator, hosts)
        print(f"{mode:7s} {args.hosts:,} hosts in {seconds:.2f} s = {args.hosts / seconds:,.0f} hosts/s "
              f"({estimated / args.hosts:.1%} estimated)")
        del hosts


if __name__ == "__main__":
    main()
