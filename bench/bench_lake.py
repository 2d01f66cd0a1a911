"""The lake at scale: generate a synthetic lake, then time the canned report and the queries on it.

    python bench/bench_lake.py generate --out DIR [--rows 100000000] [--seed 1]
    python bench/bench_lake.py report --lake DIR [--out DIR] [--threads N]

``generate`` writes, through :class:`connectors.parquet_lake.LakeWriter`, what archiving the events
topic of a two-week evaluation gives: ``events`` (SYN-ACK and banner events), ``scans`` (ScanDone
records) and the efficient policy's ``decisions``, for a world sized so that the events table has
about ``--rows`` rows. The world: about 2.7 % of the address space answers (the paper's full-port
scan), 1-6 open ports per host drawn from a Zipf law over 2,000 ports led by the paper's Table 1,
a banner on 70 % of open ports (a pool that includes hostile bytes: terminal escapes, HTML),
hosts up in 90 % of rounds. The standard policy sweeps every /24 every 12 h (28 rounds); the
efficient one scans each responsive host on the back-off ladder (12 h, 1 d, 2 d, 3 d, 5 d, ...),
sees 95 % of its ports, and sweeps the /24s every 3.5 days. There are no ``observations``, so the
report takes the heavy path: responses from 10^8 events joined to the scans for their policy.

``report`` times :func:`connectors.report.build_report` (what ``scanflow report`` runs) and prints
the time of each section. Generation is not timed as a benchmark, only reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HOUR_US = 3_600_000_000
T0_US = 1_575_244_800_000_000  # 2019-12-02T00:00Z, the start of the paper's evaluation period
LADDER_H = (12, 24, 48, 72, 120, 168, 336, 720)
TABLE1 = [80, 443, 25, 21, 110, 587, 7547, 143, 340, 995]
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
OCTETS = pa.array([str(i) for i in range(256)])
EVENTS_PER_HOST = 82.6  # measured mean over the two policies with the parameters below


def hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` random 32-hex-digit ids (the shape of ScanEvent ids), vectorised."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    out = np.empty((n, 32), dtype=np.uint8)
    out[:, 0::2] = HEX[raw >> 4]
    out[:, 1::2] = HEX[raw & 15]
    return pa.array(out.view("S32").ravel(), type=pa.binary()).cast(pa.string())


def ip_text(addr: np.ndarray) -> pa.Array:
    """Dotted quads of uint32 addresses."""
    parts = [OCTETS.take(pa.array((addr >> s) & 255)) for s in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*parts, ".")


def ids_with_prefix(prefix: str, values: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(pa.scalar(prefix), pa.array(values).cast(pa.string()), "-")


def banner_pool(rng: np.random.Generator, size: int = 500) -> pa.Array:
    hostile = [b"\x1b[2J\x1b[31mroot# \x07", b"<script>alert(1)</script>", b"HTTP/1.1 200 OK\r\nServer: <img src=x onerror=alert(1)>\r\n",
               b"\x00\xff\xfe binary \x9b junk", b"220 ftp ready \x1b]0;owned\x07"]
    servers = [b"Apache/2.4.%d", b"nginx/1.%d.0", b"lighttpd/1.4.%d", b"Boa/0.94.%d", b"GoAhead-Webs/%d", b"DVRDVS-Webs %d",
               b"RomPager/4.%d", b"micro_httpd %d", b"uc-httpd 1.0.%d", b"mini_httpd/1.%d"]
    out = list(hostile)
    while len(out) < size:
        s = servers[rng.integers(len(servers))] % int(rng.integers(100))
        out.append(b"HTTP/1.1 200 OK\r\nServer: " + s + b"\r\nContent-Type: text/html\r\n\r\n")
    return pa.array(out, type=pa.binary())


class World:
    """Responsive hosts of a synthetic address space, their open ports and banners."""

    def __init__(self, hosts: int, seed: int):
        rng = np.random.default_rng(seed)
        self.rng = rng
        space = int(hosts / 0.027)
        self.blocks = (space + 255) // 256
        base = 10 << 24  # 10.0.0.0/8 and upwards: synthetic, never scanned for real
        self.addr = np.sort(rng.choice(space, size=hosts, replace=False)).astype(np.uint32) + np.uint32(base)
        self.block_of = (self.addr - base) >> 8
        others = np.setdiff1d(np.arange(1, 65536), TABLE1)
        ports = np.concatenate([TABLE1, rng.choice(others, 1990, replace=False)])
        weights = 1.0 / np.arange(1, len(ports) + 1) ** 1.1
        k = np.minimum(1 + rng.geometric(0.6, size=hosts) - 1, 6)
        host_of_cell = np.repeat(np.arange(hosts), k)
        port_of_cell = ports[rng.choice(len(ports), size=len(host_of_cell), p=weights / weights.sum())]
        cells = np.unique(host_of_cell.astype(np.int64) << 16 | port_of_cell)
        self.cell_host = (cells >> 16).astype(np.int64)
        self.cell_port = (cells & 0xFFFF).astype(np.int32)
        self.cell_banner = np.where(rng.random(len(cells)) < 0.7, rng.integers(0, 500, len(cells)), -1)
        self.banners = banner_pool(rng)
        self.ip = ip_text(self.addr)
        self.block_slot = rng.random(self.blocks)  # where in the 12 h slot each /24 is swept
        self.host_slot = rng.random(hosts)         # when the efficient policy first found each host
        self.estimated = rng.random(hosts) < 0.2

    def events(self, cells: np.ndarray, t_scan: np.ndarray, scan_id: pa.Array) -> pa.Table:
        """SYN-ACK (and banner) events of the given cells, scanned at ``t_scan`` (per cell)."""
        rng = self.rng
        has_banner = self.cell_banner[cells] >= 0
        rows = np.concatenate([cells, cells[has_banner]])
        kind = np.concatenate([np.zeros(len(cells), np.int8), np.ones(int(has_banner.sum()), np.int8)])
        ts = np.concatenate([t_scan, t_scan[has_banner] + 1_000_000]) + rng.integers(0, 60_000_000, len(rows))
        sid = pa.concat_arrays([scan_id, scan_id.filter(pa.array(has_banner))]) if isinstance(scan_id, pa.Array) \
            else scan_id
        banner_idx = np.where(kind == 1, self.cell_banner[rows], -1)
        banner = self.banners.take(pa.array(np.maximum(banner_idx, 0))).to_numpy(zero_copy_only=False)
        banner = pa.array(banner, type=pa.binary(), mask=banner_idx < 0)
        n = len(rows)
        host = self.cell_host[rows]
        return pa.table({
            "event_id": hex_ids(rng, n), "scan_id": sid,
            "agent_id": pc.binary_join_element_wise(pa.scalar("agent"), pa.array(host % 10).cast(pa.string()), "-"),
            "ip": self.ip.take(pa.array(host)), "port": pa.array(self.cell_port[rows]),
            "transport": pa.array(np.full(n, "TCP", dtype=object), pa.string()),
            "kind": pa.array(np.where(kind == 1, "BANNER", "SYN_ACK").astype(object), pa.string()),
            "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "banner": banner, "banner_truncated": pa.array(np.zeros(n, bool)),
            "banner_protocol": pa.array(np.where(kind == 1, "http", None).astype(object), pa.string()),
            "ttl": pa.nulls(n, pa.int32()), "window": pa.nulls(n, pa.int32()),
        })


def scans_table(scan_id, target, policy, started, ended, set_name, ports_probed, addresses, bytes_sent) -> pa.Table:
    n = len(scan_id)
    ts = lambda a: pa.array(a, pa.int64()).cast(pa.timestamp("us", tz="UTC"))  # noqa: E731
    return pa.table({
        "scan_id": scan_id, "agent_id": pa.array(np.full(n, "agent-0", dtype=object), pa.string()),
        "command_id": pa.nulls(n, pa.string()), "target": target,
        "policy": pa.array(np.full(n, policy, dtype=object), pa.string()),
        "started_at": ts(started), "ended_at": ts(ended),
        "port_set_name": pa.array(set_name, pa.string()) if not isinstance(set_name, str)
        else pa.array(np.full(n, set_name, dtype=object), pa.string()),
        "port_set_version": pa.array(np.ones(n, np.int32)),
        "port_set_ports": pa.array([[]] * n, pa.list_(pa.int32())),
        "ports_probed": pa.array(np.asarray(ports_probed, np.int32) * np.ones(n, np.int32)),
        "addresses_probed": pa.array(np.asarray(addresses, np.int64) * np.ones(n, np.int64)),
        "packets_sent": pa.array(np.asarray(addresses, np.int64) * np.asarray(ports_probed, np.int64)
                                 * np.ones(n, np.int64)),
        "bytes_sent": pa.array(np.asarray(bytes_sent, np.int64) * np.ones(n, np.int64)),
        "responses": pa.array(np.zeros(n, np.int64)),
        "status": pa.array(np.full(n, "COMPLETE", dtype=object), pa.string()),
        "status_detail": pa.nulls(n, pa.string()),
    })


def generate(out: Path, rows: int, seed: int, days: int = 14) -> dict[str, int]:
    from connectors.lake_settings import LakeSettings
    from connectors.parquet_lake import LakeWriter

    hosts = max(100, int(rows / EVENTS_PER_HOST))
    world = World(hosts, seed)
    rng = world.rng
    up_p = 0.9
    writer = LakeWriter(out, LakeSettings(max_open_files=256, flush_interval_s=1e9))
    block_net = lambda b: ip_text((np.uint32(10 << 24) + (b.astype(np.uint32) << 8)))  # noqa: E731
    blocks = np.arange(world.blocks)
    block_targets = pc.binary_join_element_wise(block_net(blocks), pa.scalar("24"), "/")
    counts = {"events": 0, "scans": 0, "decisions": 0}
    # standard: every /24 every 12 h with the standard set (11,000 ports)
    for r in range(days * 2):
        t_block = T0_US + r * 12 * HOUR_US + (world.block_slot * 11 * HOUR_US).astype(np.int64)
        up_host = rng.random(hosts) < up_p
        cells = np.flatnonzero(up_host[world.cell_host])
        sids = ids_with_prefix(f"s{r}", blocks)
        ev = world.events(cells, t_block[world.block_of[world.cell_host[cells]]],
                          sids.take(pa.array(world.block_of[world.cell_host[cells]])))
        writer.write_arrow("events", ev)
        counts["events"] += len(ev)
        writer.write_arrow("scans", scans_table(sids, block_targets, "STANDARD", t_block, t_block + HOUR_US // 2,
                                                "standard", 11_000, 256, 256 * 11_000 * 40))
        counts["scans"] += len(sids)
    # efficient: each host on the ladder from when it was found, with its model's or the unknown set
    t = T0_US + (world.host_slot * 12 * HOUR_US).astype(np.int64)
    end = T0_US + days * 24 * HOUR_US
    for k in range(len(LADDER_H)):
        live = np.flatnonzero(t < end)
        if not len(live):
            break
        up_host = rng.random(hosts) < up_p
        seen_cell = up_host[world.cell_host] & (t[world.cell_host] < end) & (rng.random(len(world.cell_host)) < 0.95)
        cells = np.flatnonzero(seen_cell)
        sids = ids_with_prefix(f"e{k}", np.arange(hosts))
        ev = world.events(cells, t[world.cell_host[cells]], sids.take(pa.array(world.cell_host[cells])))
        writer.write_arrow("events", ev)
        counts["events"] += len(ev)
        ports = np.where(world.estimated[live], 16, 5100)
        writer.write_arrow("scans", scans_table(
            sids.take(pa.array(live)), world.ip.take(pa.array(live)), "EFFICIENT", t[live], t[live] + 60_000_000,
            np.where(world.estimated[live], "device", "unknown").astype(object), ports, 1, ports * 40))
        counts["scans"] += len(live)
        nxt = t + LADDER_H[k] * HOUR_US
        n = len(live)
        ts = lambda a: pa.array(a, pa.int64()).cast(pa.timestamp("us", tz="UTC"))  # noqa: E731
        status = np.where(world.estimated[live], "RESPONSIVE_ESTIMATED", "RESPONSIVE_UNESTIMATED").astype(object)
        writer.write_arrow("decisions", pa.table({
            "decision_id": hex_ids(rng, n), "ip": world.ip.take(pa.array(live)),
            "policy": pa.array(np.full(n, "EFFICIENT", dtype=object), pa.string()),
            "decided_at": ts(t[live] + 60_000_000), "scan_id": sids.take(pa.array(live)),
            "previous_status": pa.array(np.where(k == 0, "NON_RESPONSIVE", status).astype(object), pa.string()),
            "status": pa.array(status, pa.string()), "changed": pa.array(np.full(n, k == 0)),
            "device": pa.nulls(n, pa.string()), "backoff_step": pa.array(np.full(n, k, np.int32)),
            "reason": pa.array(np.full(n, "NEW_RESPONDER" if k == 0 else "BACKOFF", dtype=object), pa.string()),
            "next_scan_at": ts(nxt[live] + 60_000_000),
            "port_set_name": pa.array(np.where(world.estimated[live], None, "unknown").astype(object), pa.string()),
            "port_set_version": pa.array(np.where(world.estimated[live], None, 1).astype(object), pa.int32()),
            "port_set_ports": pa.array([[]] * n, pa.list_(pa.int32())), "command_id": pa.nulls(n, pa.string()),
        }))
        counts["decisions"] += n
        t = nxt
    # efficient sweeps of the silent space: every 3.5 days, the silent set (500 ports)
    for j in range(int(days / 3.5)):
        t_block = T0_US + int(j * 84 * HOUR_US) + (world.block_slot * 11 * HOUR_US).astype(np.int64)
        writer.write_arrow("scans", scans_table(ids_with_prefix(f"w{j}", blocks), block_targets, "EFFICIENT",
                                                t_block, t_block + HOUR_US // 2, "silent", 500, 250, 250 * 500 * 40))
        counts["scans"] += len(blocks)
    writer.flush()
    counts["files"] = len(writer.finalized)
    counts["hosts"] = hosts
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--rows", type=int, default=100_000_000)
    g.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("report")
    r.add_argument("--lake", type=Path, required=True)
    r.add_argument("--out", type=Path, default=None)
    r.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        started = time.perf_counter()
        counts = generate(args.out, args.rows, args.seed)
        elapsed = time.perf_counter() - started
        size = sum(f.stat().st_size for f in args.out.rglob("*.parquet"))
        print(f"generated {counts} in {elapsed:.1f} s; {size / 1e9:.2f} GB of Parquet")
        return 0
    import tempfile

    from connectors.report import build_report

    out = args.out or Path(tempfile.mkdtemp(prefix="scanflow-report-"))
    started = time.perf_counter()
    result = build_report(args.lake, out, threads=args.threads)
    elapsed = time.perf_counter() - started
    for name, seconds in result.timings.items():
        print(f"  {name:<28} {seconds:7.2f} s")
    print(f"report over {result.rows.get('events', 0):,} event rows in {elapsed:.1f} s -> {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
