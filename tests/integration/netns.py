"""A private test network: one network namespace joined to the host by a veth pair, always removed.

    with TestNet() as net:                  # needs root; see require_root()
        net.host_ip, net.ns_ip              # 198.18.X.1 (host side), 198.18.X.2 (inside)
        proc = net.spawn([...])             # a process inside the namespace (killed on exit)

Only addresses of 198.18.0.0/15 (RFC 2544, benchmarking) are used, on a /24 that no route of the
host uses yet. Everything a test sends to ``net.ns_ip`` crosses only the veth pair; :meth:`route_ok`
checks that the kernel routes the test's targets through it before anything is sent. The namespace
(and with it the veth pair) is deleted on exit, on interpreter exit, and by :func:`sweep_stale` for
namespaces whose creating process died.

The namespace primitives and the packet capture live in :mod:`tests.testbed` (re-exported here).
It also starts the test host's services (:func:`start_services`, Debian's sshd and vsftpd) and reads
what the agent published (:func:`read_records`).

Run as a module it serves the test host's banner services (inside the namespace)::

    python -m tests.integration.netns serve --bind 198.18.X.2 --log FILE --http 80 --ftp 21 ...
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.testbed.base import PREFIX, root_skip_reason, run as _run, stop_processes, sweep_stale, used_slash24s  # noqa: F401
from tests.testbed.capture import Capture, Packet, read_pcap  # noqa: F401  (moved to tests.testbed)


def require_root() -> None:
    """Skip the calling test, saying why, when namespaces cannot be made."""
    import pytest

    reason = root_skip_reason()
    if reason:
        pytest.skip(reason)


def _free_subnet() -> int:
    used = used_slash24s()              # every route, address and rule of 198.18.0.0/15
    choices = [x for x in range(1, 255) if x not in used]
    if not choices:
        raise RuntimeError("no free /24 left in 198.18.0.0/16 for a test network")
    return random.choice(choices)


class TestNet:
    """One namespace + veth pair on a free 198.18.X.0/24 (see the module docstring)."""

    __test__ = False  # not a test class

    def __init__(self) -> None:
        tag = f"{random.getrandbits(24):06x}"
        self.name = f"{PREFIX}-{os.getpid()}-{tag}"
        self.host_if = f"sfh{tag}"
        self.ns_if = f"sfn{tag}"
        self.subnet_index = 0
        self.host_ip = self.ns_ip = ""
        self.peer_mac = ""
        self._procs: list[subprocess.Popen] = []
        self._up = False

    @property
    def subnet(self) -> str:
        return f"198.18.{self.subnet_index}.0/24"

    def address(self, host: int) -> str:
        """An address of the test /24 (``host`` 1..254)."""
        return f"198.18.{self.subnet_index}.{host}"

    def __enter__(self) -> "TestNet":
        sweep_stale()
        self.subnet_index = _free_subnet()
        self.host_ip, self.ns_ip = self.address(1), self.address(2)
        atexit.register(self.close)
        try:
            _run("ip", "netns", "add", self.name)
            self._up = True
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.name)
            for iface, ns in ((self.host_if, None), (self.ns_if, self.name)):
                # IPv6 off: no router solicitations or DAD packets in the interface counters.
                cmd = ["sysctl", "-qw", f"net.ipv6.conf.{iface}.disable_ipv6=1"]
                _run(*(["ip", "netns", "exec", ns] + cmd if ns else cmd), check=False)
            _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            self.ns("ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
            self.ns("ip", "link", "set", self.ns_if, "up")
            self.ns("ip", "link", "set", "lo", "up")
            self.peer_mac = self.ns("cat", f"/sys/class/net/{self.ns_if}/address").stdout.strip()
            if not self.route_ok(self.ns_ip):
                raise RuntimeError(f"{self.ns_ip} is not routed through {self.host_if}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ns(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a short command inside the namespace."""
        return _run("ip", "netns", "exec", self.name, *args, check=check)

    def spawn(self, args: list[str], **popen) -> subprocess.Popen:
        """Start a long-running process inside the namespace; it is killed on :meth:`close`."""
        popen.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *args], **popen)
        self._procs.append(proc)
        return proc

    def route_ok(self, ip: str) -> bool:
        """True when the kernel sends packets for ``ip`` through this pair's host interface."""
        out = _run("ip", "-4", "route", "get", ip, check=False).stdout
        return f" dev {self.host_if} " in out + " "

    def tx_packets(self) -> int:
        """Packets the host sent into the namespace so far."""
        return int(Path(f"/sys/class/net/{self.host_if}/statistics/tx_packets").read_text())

    def close(self) -> None:
        """Kill spawned processes, delete the namespace (and the veth pair with it). Idempotent."""
        stop_processes(self._procs)
        if self._up:
            _run("ip", "netns", "del", self.name, check=False)
            _run("ip", "link", "del", self.host_if, check=False)
            self._up = False


# -- the test host's services ------------------------------------------------------------------------

GREETINGS = {
    "ftp": b"220 scanflow-test FTP service ready\r\n",
    "ssh": b"SSH-2.0-ScanflowTest_1.0\r\n",
    "telnet": b"\xff\xfd\x18\xff\xfd\x20\xff\xfb\x01\r\nscanflow-test telnet\r\nlogin: ",
}
KINDS = ("http", "ftp", "ssh", "telnet", "rtsp", "silent")
HTTP_BODY = b"<html><head><title>scanflow test camera</title></head><body>ok</body></html>"
RTSP_REPLY = (b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nServer: scanflow-test-rtsp\r\n"
              b"Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n")


def http_reply(user_agent: str) -> bytes:
    """What the test HTTP service answers: its headers name the User-Agent it was sent."""
    return (b"HTTP/1.1 200 OK\r\nServer: scanflow-test-httpd\r\nX-Seen-User-Agent: " + user_agent.encode()
            + b"\r\nContent-Type: text/html\r\nContent-Length: " + str(len(HTTP_BODY)).encode()
            + b"\r\nConnection: close\r\n\r\n" + HTTP_BODY)


async def _serve(bind: str, services: list[tuple[str, int]], log_path: str) -> None:
    log = open(log_path, "a", buffering=1)

    def record(kind: str, port: int, data: bytes) -> None:
        log.write(f"{kind}\t{port}\t{data.hex()}\n")

    def handler(kind: str, port: int):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if kind in GREETINGS:
                    writer.write(GREETINGS[kind])
                    await writer.drain()
                    # Keep what the client says, if anything, until it closes (or 10 s).
                    data = b""
                    try:
                        while len(data) < 65536:
                            chunk = await asyncio.wait_for(reader.read(4096), 10)
                            if not chunk:
                                break
                            data += chunk
                    except asyncio.TimeoutError:
                        pass
                    record(kind, port, data)
                elif kind == "silent":
                    # Accepts and never says anything, nor closes: an open port without a banner
                    # that keeps a grabber waiting until its own timeout.
                    data = b""
                    while chunk := await reader.read(65536):
                        data += chunk
                    record(kind, port, data)
                elif kind in ("http", "rtsp"):
                    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    record(kind, port, data)
                    if kind == "http":
                        ua = next((line.split(b":", 1)[1].strip().decode("latin-1")
                                   for line in data.split(b"\r\n") if line.lower().startswith(b"user-agent:")), "")
                        writer.write(http_reply(ua))
                    else:
                        writer.write(RTSP_REPLY)
                    await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()
        return handle

    servers = [await asyncio.start_server(handler(kind, port), bind, port) for kind, port in services]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def start_services(net: "TestNet | None", bind: str, log: Path, services: list[tuple[str, int]]) -> subprocess.Popen:
    """Start :func:`_serve` (``python -m tests.integration.netns serve``) inside ``net`` (or on this
    host when ``net`` is None, for loopback tests) and wait until it listens."""
    args = [sys.executable, "-m", "tests.integration.netns", "serve", "--bind", bind, "--log", str(log)]
    for kind, port in services:
        args += [f"--{kind}", str(port)]
    repo = Path(__file__).resolve().parents[2]
    popen = dict(stdout=subprocess.PIPE, text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    if net is not None:
        proc = net.spawn(args, **popen)
    else:
        proc = subprocess.Popen(args, start_new_session=True, **popen)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("the test services did not start")
    return proc


def start_sshd(net: TestNet, tmp: Path, port: int = 22) -> subprocess.Popen:
    """Debian's OpenSSH server inside ``net`` (a throwaway host key, no configuration file)."""
    key = tmp / "ssh_host_ed25519_key"
    if not key.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
    proc = net.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-h", str(key), "-o",
                      f"ListenAddress={net.ns_ip}", "-o", f"Port={port}", "-o", "PidFile=none"],
                     stderr=subprocess.PIPE, text=True)
    _wait_listening(net, port, proc)
    return proc


def start_vsftpd(net: TestNet, tmp: Path, port: int = 21, banner: str = "scanflow test vsftpd") -> subprocess.Popen:
    """Debian's vsftpd inside ``net``, in the foreground, local users only (nobody logs in)."""
    conf = tmp / "vsftpd.conf"
    conf.write_text(f"listen=YES\nlisten_ipv6=NO\nlisten_address={net.ns_ip}\nlisten_port={port}\n"
                    "background=NO\nanonymous_enable=NO\nlocal_enable=YES\nwrite_enable=NO\n"
                    f"ftpd_banner={banner}\n")
    proc = net.spawn(["/usr/sbin/vsftpd", str(conf)], stderr=subprocess.PIPE, text=True)
    _wait_listening(net, port, proc)
    return proc


def _wait_listening(net: TestNet, port: int, proc: subprocess.Popen, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3]} exited: {proc.stderr.read() if proc.stderr else ''}")
        if f":{port} " in net.ns("ss", "-Hltn", check=False).stdout:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} in {net.name}")


def read_records(kafka, topic: str, done, timeout_s: float = 60.0, raw: bool = False) -> list[tuple[bytes | None, object]]:
    """Read ``topic`` from the beginning until ``done(records)`` is true (or the timeout); returns
    ``(key, Decoded)`` pairs (the Kafka record where the value does not decode, or always with
    ``raw``). A helper of the agent tests (real broker, unique topics)."""
    from connectors.avro_codec import CodecError, decode
    from connectors.kafka_io import make_consumer, topic_partitions

    consumer = make_consumer(kafka)
    try:
        tps = topic_partitions(consumer, [topic])
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list = []
        deadline = time.monotonic() + timeout_s
        ends = None
        while time.monotonic() < deadline:
            if ends is None and done(out):
                # Also read what the other partitions hold up to now: a range's events and its
                # ScanDone are keyed differently, so they need not arrive together.
                ends = consumer.end_offsets(tps)
            if ends is not None and all(consumer.position(tp) >= end for tp, end in ends.items()):
                break
            for records in consumer.poll(timeout_ms=200).values():
                for rec in records:
                    if raw:
                        out.append((rec.key, rec))
                        continue
                    try:
                        out.append((rec.key, decode(rec.value)))
                    except CodecError:
                        out.append((rec.key, rec))
        return out
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> None:
    """``serve``: run the banner services until killed."""
    parser = argparse.ArgumentParser(prog="python -m tests.integration.netns")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--bind", required=True)
    serve.add_argument("--log", required=True)
    for kind in KINDS:
        serve.add_argument(f"--{kind}", type=int, action="append", default=[], metavar="PORT")
    args = parser.parse_args(argv)
    services = [(kind, port) for kind in KINDS for port in getattr(args, kind)]
    asyncio.run(_serve(args.bind, services, args.log))


if __name__ == "__main__":
    main(sys.argv[1:])
