"""The testbed: a scanner side, a router and a target side, with real daemons on sparse /24s.

::

    host (root namespace, the scanner)          router namespace                 target namespace
    scanner_if  198.18.L.1/30  ── veth ──  r0 198.18.L.2/30                      t0 198.18.L.6/30
      routes: each block via 198.18.L.2          r1 198.18.L.5/30  ── veth ──      + every live address /32
                                                 ip_forward, no redirects          default via 198.18.L.5
                                                 blackhole <block>/24
                                                 <live>/32 via 198.18.L.6

A SYN to a silent address of a block reaches the router (one ARP entry on the scanner's link: the
router's) and is dropped there by the ``blackhole`` route, without an ICMP answer: a silent address
behaves as it does on the Internet. Live addresses are routed on to the target namespace, where
their daemons listen; a closed port of a live address answers with a RST.

``layout="samelink"`` is the other kind of network, where the scanner sits on the same link as the
scanned addresses (its address is .254 of the block; the block is the lower /25): every silent
address costs the scanner ARP requests that nobody answers, and the connect backend's SYNs to it
never leave the host. It is what the field report about a phantom open port was measured on.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import random
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed.base import (free_slash24s, kill_namespace_processes, network_lock, root_skip_reason, run,
                                stop_processes, sweep_stale)
from tests.testbed.capture import Capture
from tests.testbed.services import (DAEMON_KINDS, start_devices, start_lighttpd, start_sshd, start_vsftpd,
                                    wait_listening)

#: What a service kind is, as a protocol name in :attr:`Testbed.truth`.
PROTOCOL = {"sshd": "ssh", "vsftpd": "ftp", "lighttpd": "http", "http-auth": "http", "telnet": "telnet",
            "rtsp": "rtsp", "ftp": "ftp", "smtp": "smtp", "dvr": "dvr", "https": "tls"}

CAMERA = {"server": "GoAhead-Webs", "realm": "GoAhead"}
DVR_WEB = {"server": "uc-httpd 1.0.0", "realm": "NETSURVEILLANCE WEB"}
ROUTER = {"server": "mini_httpd/1.19 19dec2003", "realm": "TP-LINK Wireless N Router WR840N"}
ROUTER2 = {"server": "Router Webserver", "realm": "Broadband Router"}
BUSYBOX = {"host": "(none)"}
#: A Dahua camera's web interface over TLS: a self-signed certificate naming its model (TLS 1.2).
DAHUA_TLS = {"cn": "IPC-HFW1320S", "org": "Dahua", "san_dns": ["ipc.local"], "san_ip": ["192.168.1.108"],
             "server": "Dahua Rpc Server", "tls12_cipher": "ECDHE-RSA-AES128-GCM-SHA256"}
#: A router's expired self-signed certificate (TLS 1.3, no SAN).
ROUTER_TLS = {"cn": "TL-WR940N", "org": "TP-LINK", "expired": True, "server": "Router Webserver"}
BUSYBOX_WAIT = {"host": "(none)", "wait": True}
BUSYBOX_DVR = {"host": "dvrdvs", "banner": "BusyBox v1.16.1 (2013-09-04 15:46:13 CST) built-in shell (ash)"}


@dataclass(frozen=True)
class Service:
    port: int
    kind: str                       # a daemon (DAEMON_KINDS) or a device kind of services.serve
    params: dict = field(default_factory=dict, hash=False, compare=False)


#: layout -> (number of /24 blocks, [(block index, host number, services)]).
LAYOUTS: dict[str, tuple[int, list[tuple[int, int, list[Service]]]]] = {
    # One /24, seven live hosts of 254; a distinct mix of 2-3 ports each, common and uncommon ones.
    "sparse24": (1, [
        (0, 10, [Service(22, "sshd"), Service(80, "lighttpd"), Service(2323, "telnet", BUSYBOX)]),
        (0, 23, [Service(80, "http-auth", CAMERA), Service(554, "rtsp", {"server": "Hipcam RealServer/V1.0"}),
                 Service(37777, "dvr")]),
        (0, 57, [Service(21, "vsftpd"), Service(23, "telnet", BUSYBOX_DVR), Service(8081, "http-auth", ROUTER)]),
        (0, 98, [Service(25, "smtp", {"banner": "mail.testbed.invalid ESMTP Postfix (Debian/GNU)"}),
                 Service(2222, "sshd"), Service(5000, "lighttpd")]),
        (0, 130, [Service(8060, "http-auth", DVR_WEB), Service(8554, "rtsp"),
                  Service(2121, "ftp", {"banner": "DVR FTP server ready."})]),
        (0, 201, [Service(8080, "http-auth", ROUTER2), Service(22, "sshd")]),
        (0, 108, [Service(443, "https", DAHUA_TLS), Service(23, "telnet", BUSYBOX_WAIT)]),
    ]),
    # Four /24s, six live hosts in all (one /24 entirely silent).
    "multi": (4, [
        (0, 7, [Service(22, "sshd"), Service(80, "lighttpd")]),
        (0, 200, [Service(23, "telnet", BUSYBOX), Service(8081, "http-auth", CAMERA)]),
        (1, 33, [Service(554, "rtsp"), Service(37777, "dvr"), Service(80, "http-auth", DVR_WEB)]),
        (3, 5, [Service(21, "vsftpd"), Service(25, "smtp")]),
        (3, 99, [Service(2323, "telnet", BUSYBOX_DVR), Service(5000, "lighttpd"),
                 Service(8060, "http-auth", ROUTER)]),
        (3, 250, [Service(2222, "sshd"), Service(8554, "rtsp", {"server": "Hipcam RealServer/V1.0"})]),
    ]),
    # TLS devices and a telnetd that negotiates before its prompt (the grabbers' testbed).
    "tls": (1, [
        (0, 108, [Service(443, "https", DAHUA_TLS), Service(23, "telnet", BUSYBOX_WAIT)]),
        (0, 60, [Service(8443, "https", ROUTER_TLS), Service(80, "lighttpd")]),
    ]),
    # The scanner on the same link as the scanned /25 (see the module docstring).
    "samelink": (1, [
        (0, 10, [Service(22, "sshd"), Service(80, "lighttpd"), Service(2323, "telnet", BUSYBOX)]),
        (0, 23, [Service(80, "http-auth", CAMERA), Service(554, "rtsp")]),
        (0, 57, [Service(21, "vsftpd"), Service(8081, "http-auth", ROUTER)]),
        (0, 98, [Service(25, "smtp"), Service(5000, "lighttpd")]),
        (0, 120, [Service(8060, "http-auth", DVR_WEB), Service(8554, "rtsp")]),
    ]),
}


def tls_cost_layout(live: int) -> tuple[int, list]:
    """One /24 with ``live`` hosts (1-254), each serving the same device on two ports: its web
    interface over TLS on 443 (the Dahua camera's self-signed certificate, TLS 1.2) and in clear on 80
    (a 401 with its realm). A scan of 443 and one of 80 find the same number of open ports, so their
    difference is what TLS costs a scan (``bench/bench_tls_testbed.py``)."""
    if not 1 <= live <= 254:
        raise ValueError(f"live hosts must be 1-254 in one /24, not {live}")
    web = {"server": DAHUA_TLS["server"], "realm": DAHUA_TLS["cn"]}
    step = 254 / live
    return 1, [(0, 1 + int(i * step), [Service(443, "https", DAHUA_TLS), Service(80, "http-auth", web)])
               for i in range(live)]


def testbed_skip_reason() -> str | None:
    """Why the testbed cannot be built here (None when it can)."""
    reason = root_skip_reason()
    if reason:
        return reason
    for tool, pkg in (("tcpdump", "tcpdump"), ("/usr/sbin/sshd", "openssh-server"),
                      ("/usr/sbin/vsftpd", "vsftpd"), ("/usr/sbin/lighttpd", "lighttpd"),
                      ("ssh-keygen", "openssh-client")):
        if not shutil.which(tool):
            return f"the testbed needs {tool} (apt-get install {pkg}; `make setup` installs it)"
    return None


testbed_skip_reason.__test__ = False  # tests import it; pytest must not collect it


def require_testbed() -> None:
    """Skip the calling test with the reason (``pytest.skip``) when the testbed cannot be built here;
    outside pytest, raise RuntimeError with it."""
    reason = testbed_skip_reason()
    if reason:
        if "pytest" in sys.modules:
            import pytest

            pytest.skip(reason)
        raise RuntimeError(reason)


class _Ns:
    """One namespace of the testbed."""

    def __init__(self, name: str):
        self.name = name
        self.procs: list[subprocess.Popen] = []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.name, *args, check=check)

    def ip(self, *args: str) -> None:
        run("ip", "-n", self.name, *args)

    def spawn(self, args: list[str], **popen) -> subprocess.Popen:
        popen.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *args], **popen)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        stop_processes(self.procs)
        kill_namespace_processes(self.name)   # anything a daemon forked outside its group


class Testbed:
    """Namespaces, links, routes and services of one testbed (see the module docstring).

    ``tmp`` holds the configuration files, logs and captures; ``layout`` is a key of
    :data:`LAYOUTS`, or a label when ``spec`` (a layout's ``(blocks, hosts)`` of the same shape,
    e.g. from :func:`tls_cost_layout`) is given. Use it as a context manager: everything is removed on exit (and on interpreter
    exit; a test process that died is cleaned up by the next testbed's :func:`sweep_stale`).
    """

    __test__ = False

    def __init__(self, tmp: str | Path, layout: str = "sparse24", seed: int | None = None,
                 spec: tuple[int, list] | None = None):
        if spec is None and layout not in LAYOUTS:
            raise ValueError(f"unknown testbed layout {layout!r}; known: {', '.join(LAYOUTS)}")
        self.spec = spec if spec is not None else LAYOUTS[layout]
        self.tmp = Path(tmp)
        self.layout = layout
        self.same_link = layout == "samelink"
        self.rng = random.Random(seed)
        tag = f"{random.getrandbits(24):06x}"
        self.tag = tag
        self.router = _Ns(f"sfa-{os.getpid()}-{tag}0")
        self.target = _Ns(f"sfa-{os.getpid()}-{tag}1")
        self.scanner_if = f"sfb{tag}"
        self.scanner_ip = self.router_ip = self.router_mac = ""
        self.blocks: list[str] = []
        self.truth: dict[str, dict[int, str]] = {}
        self.services: dict[str, dict[int, Service]] = {}
        self.devices_log = self.tmp / "devices.log"
        self._made: list[_Ns] = []
        self._link = False
        self._captures = 0

    # -- building ------------------------------------------------------------------------------------

    def __enter__(self) -> "Testbed":
        require_testbed()
        self.tmp.mkdir(parents=True, exist_ok=True)
        sweep_stale()
        atexit.register(self.close)
        try:
            n_blocks, hosts = self.spec
            with network_lock():
                nets = free_slash24s(n_blocks + (0 if self.same_link else 1), self.rng)
                if self.same_link:
                    self._build_same_link(nets[0], hosts)
                else:
                    self._build_routed(nets[0], nets[1:], hosts)
            self._start_services()
            self._check_routes()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, ns: _Ns) -> None:
        run("ip", "netns", "add", ns.name)
        self._made.append(ns)
        ns("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        ns.ip("link", "set", "lo", "up")

    def _host_link(self, peer_ns: _Ns, peer_if: str, address: str) -> None:
        run("ip", "link", "add", self.scanner_if, "type", "veth", "peer", "name", peer_if, "netns", peer_ns.name)
        self._link = True
        # The alias names the owner, so a sweep after a crash finds the link; no IPv6 chatter.
        run("ip", "link", "set", self.scanner_if, "alias", peer_ns.name)
        run("sysctl", "-qw", f"net.ipv6.conf.{self.scanner_if}.disable_ipv6=1", check=False)
        run("ip", "addr", "add", address, "dev", self.scanner_if)
        run("ip", "link", "set", self.scanner_if, "up")
        peer_ns("sysctl", "-qw", f"net.ipv6.conf.{peer_if}.disable_ipv6=1", check=False)

    def _hosts(self, blocks: list[ipaddress.IPv4Network], hosts) -> list[str]:
        live = []
        for block, host, services in hosts:
            ip = str(blocks[block].network_address + host)
            live.append(ip)
            self.services[ip] = {s.port: s for s in services}
            self.truth[ip] = {s.port: PROTOCOL[s.kind] for s in services}
        return live

    def _build_routed(self, link: ipaddress.IPv4Network, blocks: list[ipaddress.IPv4Network], hosts) -> None:
        base = link.network_address
        host_ip, r0_ip, r1_ip, t0_ip = (str(base + i) for i in (1, 2, 5, 6))
        self.scanner_ip, self.router_ip = host_ip, r0_ip
        self.blocks = [str(b) for b in blocks]
        live = self._hosts(blocks, hosts)
        self._add_ns(self.router)
        self._add_ns(self.target)
        self._host_link(self.router, "r0", f"{host_ip}/30")
        r, t = self.router, self.target
        r("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
          "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.all.send_redirects=0",
          "net.ipv4.conf.default.send_redirects=0")
        r.ip("link", "add", "r1", "type", "veth", "peer", "name", "t0", "netns", t.name)
        r.ip("addr", "add", f"{r0_ip}/30", "dev", "r0")
        r.ip("addr", "add", f"{r1_ip}/30", "dev", "r1")
        r.ip("link", "set", "r0", "up")
        r.ip("link", "set", "r1", "up")
        t.ip("addr", "add", f"{t0_ip}/30", "dev", "t0")
        t.ip("link", "set", "t0", "up")
        t.ip("route", "add", "default", "via", r1_ip)
        for block in self.blocks:
            r.ip("route", "add", "blackhole", block)           # silent: dropped, no ICMP
        for ip in live:
            r.ip("route", "add", f"{ip}/32", "via", t0_ip, "dev", "r1")
            t.ip("addr", "add", f"{ip}/32", "dev", "t0")
        for block in self.blocks:
            run("ip", "route", "add", block, "via", r0_ip, "dev", self.scanner_if)
        self.router_mac = r("cat", "/sys/class/net/r0/address").stdout.strip()

    def _build_same_link(self, net: ipaddress.IPv4Network, hosts) -> None:
        self.router = self.target          # the on-link peer plays the next hop for masscan
        self.scanner_ip = str(net.network_address + 254)
        self.blocks = [str(ipaddress.IPv4Network((net.network_address, 25)))]
        live = self._hosts([net], hosts)
        self._add_ns(self.target)
        self._host_link(self.target, "t0", f"{self.scanner_ip}/24")
        t = self.target
        t.ip("link", "set", "t0", "up")
        for ip in live:
            t.ip("addr", "add", f"{ip}/24", "dev", "t0")
        self.router_ip = live[0]
        self.router_mac = t("cat", "/sys/class/net/t0/address").stdout.strip()

    def _start_services(self) -> None:
        devices, daemons = [], []
        for ip, services in self.services.items():
            for s in services.values():
                if s.kind == "sshd":
                    daemons.append(start_sshd(self.target, self.tmp, ip, s.port))
                elif s.kind == "vsftpd":
                    daemons.append(start_vsftpd(self.target, self.tmp, ip, s.port))
                elif s.kind == "lighttpd":
                    daemons.append(start_lighttpd(self.target, self.tmp, ip, s.port))
                elif s.kind == "https":
                    devices.append({"ip": ip, "port": s.port, "kind": s.kind, **s.params,
                                    **self._certificate(ip, s.port, s.params)})
                else:
                    devices.append({"ip": ip, "port": s.port, "kind": s.kind, **s.params})
        if devices:
            start_devices(self.target, devices, self.tmp, self.devices_log)
        wanted = {(ip, port) for ip, ports in self.services.items() for port in ports}
        wait_listening(self.target, wanted, daemons)

    def _certificate(self, ip: str, port: int, params: dict) -> dict:
        """A self-signed certificate for an ``https`` device, made now (``cryptography``)."""
        from tests.support.certs import self_signed

        cert, key = self_signed(self.tmp / f"cert-{ip}-{port}", params["cn"], params["org"],
                                dns=tuple(params.get("san_dns", ())), ips=tuple(params.get("san_ip", ())),
                                expired=bool(params.get("expired")))
        return {"cert": str(cert), "key": str(key)}

    def _check_routes(self) -> None:
        """Every block goes out through the scanner's interface (to the router), before any probe."""
        for block in self.blocks:
            net = ipaddress.IPv4Network(block)
            for ip in (str(net.network_address + 41), str(net.network_address + 100)):
                out = run("ip", "-4", "route", "get", ip).stdout
                if f" dev {self.scanner_if} " not in out + " ":
                    raise RuntimeError(f"{ip} is not routed through {self.scanner_if}: {out.strip()}")
                if not self.same_link and f" via {self.router_ip} " not in out:
                    raise RuntimeError(f"{ip} is not routed via the testbed router: {out.strip()}")

    # -- using it ------------------------------------------------------------------------------------

    @property
    def live(self) -> list[str]:
        """The live addresses."""
        return sorted(self.truth, key=lambda ip: ipaddress.IPv4Address(ip))

    @property
    def open_pairs(self) -> set[tuple[str, int]]:
        """Every open (ip, port) of the testbed: :attr:`truth` as pairs."""
        return {(ip, port) for ip, ports in self.truth.items() for port in ports}

    @property
    def live_ports(self) -> list[int]:
        """Every port open on some live address, sorted."""
        return sorted({port for ports in self.truth.values() for port in ports})

    def addresses(self) -> int:
        """Number of addresses in :attr:`blocks`."""
        return sum(ipaddress.IPv4Network(b).num_addresses for b in self.blocks)

    def capture(self, name: str | None = None, bpf: str = "") -> Capture:
        """A ``tcpdump`` of :attr:`scanner_if` (use as ``with``); its ``local`` is the scanner."""
        self._captures += 1
        name = name or f"capture-{self._captures}"
        return Capture(self.scanner_if, self.tmp / f"{name}.pcap", bpf, local=self.scanner_ip)

    def nmap(self, ports, scan: str = "sS", extra: tuple[str, ...] = ()) -> set[tuple[str, int]] | None:
        """``nmap -s<scan> -Pn`` of :attr:`blocks` on ``ports`` through :attr:`scanner_if`; the open
        (ip, port) pairs it reports, or None when nmap is not installed."""
        if not shutil.which("nmap"):
            return None
        out = self.tmp / f"nmap-{time.monotonic_ns()}.xml"
        cmd = ["nmap", f"-{scan}", "-Pn", "-n", "-e", self.scanner_if, "-p", ",".join(map(str, sorted(ports))),
               "-T4", "--max-retries", "1", "--min-rate", "8000", "--max-rtt-timeout", "100ms",
               "--initial-rtt-timeout", "50ms", "--min-hostgroup", "1024", "-oX", str(out), *extra, *self.blocks]
        result = run(*cmd, check=False, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"nmap failed: {result.stderr.strip()}")
        found: set[tuple[str, int]] = set()
        for host in ET.parse(out).getroot().iter("host"):
            addr = next((a.get("addr") for a in host.iter("address") if a.get("addrtype") == "ipv4"), None)
            for port in host.iter("port"):
                state = port.find("state")
                if addr and state is not None and state.get("state") == "open":
                    found.add((addr, int(port.get("portid"))))
        return found

    def close(self) -> None:
        """Stop the services, delete the namespaces and the host's link (with its routes). Idempotent."""
        for ns in self._made:
            ns.stop()
        for ns in self._made:
            run("ip", "netns", "del", ns.name, check=False)
        self._made.clear()
        if self._link:
            if Path(f"/sys/class/net/{self.scanner_if}").exists():
                run("ip", "link", "del", self.scanner_if, check=False)
            self._link = False
