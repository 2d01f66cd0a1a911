"""What the testbed's hosts run: Debian's daemons, and small servers that greet like devices.

Real daemons where Debian has them: OpenSSH's sshd (:func:`start_sshd`), vsftpd
(:func:`start_vsftpd`), lighttpd (:func:`start_lighttpd`), each bound to one address and port.
Devices whose software Debian does not ship are played by :func:`serve` (``python -m
tests.testbed.serve --spec FILE --log FILE``), one asyncio process for every
(address, port, kind) of a testbed. Its kinds answer the way such devices do on the Internet:

==============  =========================================================================================
``http-auth``   any request: ``401 Unauthorized`` with a ``Server`` header and ``WWW-Authenticate:
                Basic realm="..."`` (camera and router web interfaces)
``telnet``      Telnet option negotiation (IAC DO/WILL) then a BusyBox banner and ``login:`` prompt
``rtsp``        ``OPTIONS``: ``RTSP/1.0 200 OK`` with ``Server`` and ``Public`` headers
``ftp``         an FTP ``220`` greeting
``smtp``        an SMTP ``220 ... ESMTP`` greeting
``dvr``         silent until spoken to, then a short binary reply and close (a DVR's private protocol)
``https``       TLS with the device's self-signed certificate (``cert``/``key``: PEM files, made at test time
                by :class:`~tests.testbed.bed.Testbed` from ``cn``/``org``/``san_dns``/``san_ip``/``expired``),
                then any request: ``200 OK`` with a ``Server`` header (a camera's web interface)
==============  =========================================================================================

``telnet`` with ``"wait": true`` is a telnetd that waits (up to 2 s) for the answers to its four
options before it shows the banner and prompt, like the ones that negotiate first; it logs what came
before the prompt and, on a second line of kind ``telnet-after-prompt``, what came after it.

Every server only answers; what clients sent is appended to the log (``kind, address, port, hex``),
so a test can check that the scanner never sent a user name or password.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from tests.testbed.base import run

REPO = Path(__file__).resolve().parents[2]

#: Kinds served by :func:`serve`; the others are Debian daemons.
DEVICE_KINDS = ("http-auth", "telnet", "rtsp", "ftp", "smtp", "dvr", "https")
DAEMON_KINDS = ("sshd", "vsftpd", "lighttpd")

TELNET_NEGOTIATION = bytes([255, 251, 1, 255, 251, 3, 255, 253, 24, 255, 253, 31])  # WILL ECHO, SGA; DO TTYPE, NAWS


def http_401(server: str, realm: str) -> bytes:
    body = b"<html><head><title>401 Unauthorized</title></head><body>401 Unauthorized</body></html>\n"
    return (f"HTTP/1.1 401 Unauthorized\r\nServer: {server}\r\n"
            f"WWW-Authenticate: Basic realm=\"{realm}\"\r\nContent-Type: text/html\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _reply_for(entry: dict) -> tuple[str, bytes]:
    """(mode, bytes): ``greet`` sends at once, ``answer`` after the client's request."""
    kind = entry["kind"]
    if kind == "http-auth":
        return "answer", http_401(entry.get("server", "GoAhead-Webs"), entry.get("realm", "GoAhead"))
    if kind == "telnet" and entry.get("wait"):
        shell = entry.get("banner", "BusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)")
        return "negotiate", f"\r\n{shell}\r\n\r\n{entry.get('host', '(none)')} login: ".encode()
    if kind == "https":
        body = f"<html><head><title>{entry.get('title', 'WEB SERVICE')}</title></head></html>\n".encode()
        return "answer", (f"HTTP/1.1 200 OK\r\nServer: {entry.get('server', 'Webs')}\r\nContent-Type: text/html\r\n"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    if kind == "telnet":
        shell = entry.get("banner", "BusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)")
        host = entry.get("host", "(none)")
        return "greet", TELNET_NEGOTIATION + f"\r\n{shell}\r\n\r\n{host} login: ".encode()
    if kind == "rtsp":
        return "answer", (f"RTSP/1.0 200 OK\r\nCSeq: 1\r\nServer: {entry.get('server', 'Rtsp Server/2.0')}\r\n"
                          "Public: OPTIONS, DESCRIBE, SETUP, TEARDOWN, PLAY, PAUSE\r\n\r\n").encode()
    if kind == "ftp":
        return "greet", f"220 {entry.get('banner', 'FTP server ready.')}\r\n".encode()
    if kind == "smtp":
        return "greet", f"220 {entry.get('banner', 'mail.testbed.invalid ESMTP')}\r\n".encode()
    if kind == "dvr":
        return "binary", bytes.fromhex(entry.get("reply", "b00000680000000000000000000000000000000000000000"))
    raise ValueError(f"unknown device kind {kind!r}")


async def serve(spec: list[dict], log_path: str) -> None:
    """Serve every entry of ``spec`` (``{"ip", "port", "kind", ...}``) until killed."""
    log = open(log_path, "a", buffering=1)

    def handler(entry: dict):
        mode, reply = _reply_for(entry)
        kind, ip, port = entry["kind"], entry["ip"], entry["port"]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = b""
            try:
                if mode == "greet":
                    writer.write(reply)
                    await writer.drain()
                    # Keep what the client says, if anything, until it closes (or 10 s).
                    try:
                        while len(data) < 65536:
                            chunk = await asyncio.wait_for(reader.read(4096), 10)
                            if not chunk:
                                break
                            data += chunk
                    except asyncio.TimeoutError:
                        pass
                elif mode == "negotiate":
                    writer.write(TELNET_NEGOTIATION)
                    await writer.drain()
                    try:                          # the answers: 4 options x 3 bytes
                        while len(data) < 12:
                            chunk = await asyncio.wait_for(reader.read(64), 2)
                            if not chunk:
                                break
                            data += chunk
                    except asyncio.TimeoutError:
                        pass
                    writer.write(reply)           # banner and login prompt
                    await writer.drain()
                    after = b""
                    try:
                        while len(after) < 65536:
                            chunk = await asyncio.wait_for(reader.read(4096), 10)
                            if not chunk:
                                break
                            after += chunk
                    except asyncio.TimeoutError:
                        pass
                    log.write(f"telnet-after-prompt\t{ip}\t{port}\t{after.hex()}\n")
                elif mode == "binary":
                    data = await asyncio.wait_for(reader.read(4096), 30)
                    if data:
                        writer.write(reply)
                        await writer.drain()
                else:
                    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    if kind == "rtsp":
                        cseq = next((line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
                                     if line.lower().startswith(b"cseq:")), b"1")
                        writer.write(reply.replace(b"CSeq: 1\r\n", b"CSeq: " + cseq + b"\r\n"))
                    else:
                        writer.write(reply)
                    await writer.drain()
                    if kind == "https":           # anything more, until the client closes
                        while len(data) < 65536:
                            chunk = await asyncio.wait_for(reader.read(4096), 10)
                            if not chunk:
                                break
                            data += chunk
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError,
                    ConnectionError, ssl.SSLError):
                pass
            finally:
                log.write(f"{kind}\t{ip}\t{port}\t{data.hex()}\n")
                writer.close()
        return handle

    def tls(entry: dict) -> ssl.SSLContext | None:
        if entry["kind"] != "https":
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(entry["cert"], entry["key"])
        if entry.get("tls12_cipher"):
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(entry["tls12_cipher"])
        return ctx

    servers = [await asyncio.start_server(handler(e), e["ip"], e["port"], ssl=tls(e)) for e in spec]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# -- starting them inside a namespace ----------------------------------------------------------------

class Namespace(Protocol):
    name: str

    def spawn(self, args: list[str], **popen) -> subprocess.Popen: ...


def listening(ns: str) -> set[tuple[str, int]]:
    """(address, port) of the TCP listeners in namespace ``ns``."""
    out = run("ip", "netns", "exec", ns, "ss", "-Hltn", check=False).stdout
    got = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and ":" in parts[3]:
            addr, _, port = parts[3].rpartition(":")
            got.add((addr.strip("[]"), int(port)))
    return got


def wait_listening(ns: Namespace, wanted: set[tuple[str, int]], procs: list[subprocess.Popen],
                   timeout_s: float = 20) -> None:
    """Wait until every (address, port) of ``wanted`` listens in ``ns``; fail fast when a daemon dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"{' '.join(map(str, proc.args[3:5]))} exited: {err}")
        missing = wanted - listening(ns.name)
        if not missing:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {sorted(missing)} in {ns.name}")


def start_devices(ns: Namespace | None, spec: list[dict], tmp: Path, log: Path) -> subprocess.Popen:
    """Start :func:`serve` for ``spec`` inside ``ns`` (or on this host when None); waits for it."""
    spec_file = tmp / f"devices-{os.getpid()}-{len(spec)}-{time.monotonic_ns()}.json"
    spec_file.write_text(json.dumps(spec))
    args = [sys.executable, "-m", "tests.testbed.serve", "--spec", str(spec_file), "--log", str(log)]
    popen = dict(stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    proc = ns.spawn(args, **popen) if ns is not None else subprocess.Popen(args, start_new_session=True, **popen)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("the device servers did not start")
    return proc


def ssh_host_key(tmp: Path) -> Path:
    """A throwaway ed25519 host key under ``tmp``."""
    key = tmp / "ssh_host_ed25519_key"
    if not key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    return key


def start_sshd(ns: Namespace, tmp: Path, ip: str, port: int = 22) -> subprocess.Popen:
    """Debian's OpenSSH server (a throwaway host key, no configuration file, no logins possible:
    no user has a key or password it would accept). Does not wait; see :func:`wait_listening`."""
    key = ssh_host_key(tmp)
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
    return ns.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-h", str(key), "-o",
                     f"ListenAddress={ip}", "-o", f"Port={port}", "-o", "PidFile=none",
                     "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                     "-o", "AuthorizedKeysFile=none"],
                    stderr=subprocess.PIPE, text=True)


def start_vsftpd(ns: Namespace, tmp: Path, ip: str, port: int = 21,
                 banner: str = "scanflow test vsftpd") -> subprocess.Popen:
    """Debian's vsftpd in the foreground, local users only (nobody logs in). Does not wait."""
    conf = tmp / f"vsftpd-{ip}-{port}.conf"
    conf.write_text(f"listen=YES\nlisten_ipv6=NO\nlisten_address={ip}\nlisten_port={port}\n"
                    "background=NO\nanonymous_enable=NO\nlocal_enable=YES\nwrite_enable=NO\n"
                    f"ftpd_banner={banner}\n")
    return ns.spawn(["/usr/sbin/vsftpd", str(conf)], stderr=subprocess.PIPE, text=True)


def start_lighttpd(ns: Namespace, tmp: Path, ip: str, port: int = 80,
                   title: str = "scanflow testbed") -> subprocess.Popen:
    """Debian's lighttpd in the foreground serving one static page. Does not wait."""
    root = tmp / f"www-{ip}-{port}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(f"<html><head><title>{title}</title></head><body>{title}</body></html>\n")
    conf = tmp / f"lighttpd-{ip}-{port}.conf"
    conf.write_text(f'server.bind = "{ip}"\nserver.port = {port}\nserver.document-root = "{root}"\n'
                    f'server.errorlog = "{tmp}/lighttpd-{ip}-{port}.log"\nindex-file.names = ("index.html")\n'
                    'mimetype.assign = (".html" => "text/html")\n')
    return ns.spawn(["/usr/sbin/lighttpd", "-D", "-f", str(conf)], stderr=subprocess.PIPE, text=True)
