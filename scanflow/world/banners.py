"""What the synthetic hosts say when a scanner connects: banners with stable parts (software, device
keywords, host names) and volatile parts (dates, session cookies, digest nonces, POP3 timestamps).

A banner is described by three small integers per (host, port) — the protocol of the port, a
software choice, and whether it carries the host's device keyword — and rendered only when someone
reads it (:func:`render`), from the probe time and a hash of (seed, ip, port, time). So the same probe
always gets the same bytes, a stable host gets the same *normalised* banner on every probe
(:func:`scanflow.fingerprint.normalize_banner` removes the volatile parts), and two instances of the
same model differ by their host names.

The generic software strings below were checked not to contain any keyword of the built-in knowledge
base (``tests/unit/scanflow/world/test_world_banners.py``): a host of a device the knowledge base does not know must
not be estimated by accident from its web server's name.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

#: Virtual time 0 of every world: the start of the paper's evaluation period (Dec 2019), UTC.
EPOCH_UNIX = 1575244800  # 2019-12-02T00:00:00Z

# Protocol codes (int8 per (host, port)).
RAW, HTTP, TLS, FTP, SSH, TELNET, SMTP, POP3, IMAP, RTSP, SIP = range(11)
PROTOCOLS = ("raw", "http", "tls", "ftp", "ssh", "telnet", "smtp", "pop3", "imap", "rtsp", "sip")

_PORT_PROTOCOL = {
    HTTP: (80, 81, 82, 83, 84, 88, 591, 1400, 3000, 3001, 5000, 7000, 7080, 7547, 8000, 8001, 8002, 8008,
           8060, 8080, 8081, 8083, 8088, 8089, 8090, 8123, 8181, 8200, 8888, 9000, 9090, 10000, 15672,
           18083, 32400, 37215, 49000, 52869),
    TLS: (443, 465, 993, 995, 1443, 4443, 5001, 5061, 7443, 8443, 8883, 8729),
    FTP: (21, 2121), SSH: (22, 2222), TELNET: (23, 2323), SMTP: (25, 587), POP3: (110,), IMAP: (143,),
    RTSP: (554, 8554, 10554), SIP: (5060,),
}
#: protocol code per port number (index = port), RAW where no protocol is known.
PORT_PROTOCOL = np.zeros(65536, dtype=np.int8)
for _proto, _ports in _PORT_PROTOCOL.items():
    PORT_PROTOCOL[list(_ports)] = _proto
PORT_PROTOCOL.setflags(write=False)

#: Protocols whose servers speak first or answer the grabber's one harmless request: always a banner.
#: On RAW ports a service says something on connect only sometimes (``WorldConfig.raw_banner_share``).
TALKATIVE = frozenset({HTTP, TLS, FTP, SSH, TELNET, SMTP, POP3, IMAP, RTSP, SIP})

#: Generic software names per protocol, for hosts the knowledge base does not know.
GENERIC_SOFTWARE: dict[int, tuple[str, ...]] = {
    RAW: ("ready", "OK", "service ready", "ERROR unknown command", "hello"),
    HTTP: ("Apache/2.4.6 (CentOS)", "Apache/2.2.15 (Red Hat)", "nginx/1.14.0", "nginx", "Microsoft-IIS/8.5",
           "Microsoft-IIS/10.0", "lighttpd/1.4.45", "Apache-Coyote/1.1", "openresty/1.13.6.2",
           "Jetty(9.4.12.v20180830)", "gunicorn/19.9.0", "Caddy", "Apache"),
    TLS: ("CN=www.{host}.jp", "CN=*.{host}.ne.jp", "CN=localhost", "CN=mail.{host}.co.jp"),
    FTP: ("ProFTPD 1.3.5 Server", "(vsFTPd 3.0.2)", "Pure-FTPd [privsep]", "FileZilla Server 0.9.60 beta",
          "Microsoft FTP Service"),
    SSH: ("OpenSSH_7.4", "OpenSSH_8.0", "OpenSSH_6.6.1p1 Ubuntu-2ubuntu2.13", "dropbear_2017.75",
          "OpenSSH_7.9p1 Debian-10"),
    TELNET: ("login:", "Username:", "User Access Verification"),
    SMTP: ("ESMTP Postfix", "ESMTP Exim 4.92", "Microsoft ESMTP MAIL Service ready", "ESMTP Sendmail 8.14.7"),
    POP3: ("Dovecot ready.", "POP3 server ready", "Qpopper ready"),
    IMAP: ("Dovecot ready.", "IMAP4rev1 Service Ready", "Courier-IMAP ready."),
    RTSP: ("RTSP Server", "Streaming Server", "live555"),
    SIP: ("SIP server", "PBX", "SIP/2.0 gateway"),
}

# Banner choice codes (int16 per (host, port)): >= 0 index into GENERIC_SOFTWARE[protocol],
NO_BANNER = -1   # the port answers the SYN, the service says nothing
KEYWORD = -2     # the banner carries the host's device keyword

_MASK64 = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a fast, well-mixed, platform-independent hash step."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, salt: int, ip, port, t) -> np.ndarray:
    """Uniform [0, 1) numbers, a pure function of (seed, salt, ip, port, t) (arrays broadcast)."""
    h = mix64(np.uint64(seed & _MASK64) ^ mix64(np.uint64(salt & _MASK64)))
    h = mix64(h ^ np.asarray(ip, dtype=np.int64).astype(np.uint64))
    h = mix64(h ^ (np.asarray(port, dtype=np.int64).astype(np.uint64) << np.uint64(40)))
    h = mix64(h ^ np.asarray(t, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _hash_int(*parts: int) -> int:
    h = 0x243F6A8885A308D3
    for p in parts:
        x = (h ^ (p & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = x ^ (x >> 31)
    return h


def host_name(token: int) -> str:
    """A per-instance host label (stable, short enough to survive banner normalisation)."""
    return f"h{token & 0xFFFFFF:06x}"


def firmware_version(token: int, updates: int) -> str:
    """The firmware version a device of the knowledge base shows after ``updates`` updates: a base
    version fixed per instance (``token``), its build number counting the updates."""
    return f"V{1 + token % 9}.{(token >> 4) % 10}.{(token >> 8) % 200 + updates}"


def render(proto: int, choice: int, *, keyword: str | None, token: int, seed: int, ip: int, port: int,
           t: int, firmware: int | None = None) -> bytes | None:
    """The bytes a grabber reads from ``port`` of host ``ip`` at virtual time ``t`` (seconds).

    ``choice`` is a :data:`GENERIC_SOFTWARE` index, :data:`NO_BANNER` or :data:`KEYWORD` (then
    ``keyword`` is the device keyword to show, followed by its firmware version when ``firmware``, the
    number of updates it has had by ``t``, is given). Returns None for :data:`NO_BANNER`.
    """
    if choice == NO_BANNER:
        return None
    host = host_name(token)
    if choice == KEYWORD:
        sw = keyword or ""
        if firmware is not None:
            sw = f"{sw} firmware {firmware_version(token, firmware)}"
    else:
        options = GENERIC_SOFTWARE[proto]
        sw = options[choice % len(options)].replace("{host}", host)
    h = _hash_int(seed, ip, port, t)
    when = time.gmtime(EPOCH_UNIX + int(t))
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", when)
    if proto == HTTP:
        if port == 7547 or (token >> 8) & 3 == 0:  # CPE management ports and some web UIs ask for auth
            # a device of the knowledge base names itself in its realm too (many state their model there)
            realm = keyword if choice == KEYWORD and keyword else host
            return (f"HTTP/1.1 401 Unauthorized\r\nServer: {sw}\r\nDate: {date}\r\n"
                    f"WWW-Authenticate: Digest realm=\"{realm}\", nonce=\"{h:016x}\", qop=\"auth\"\r\n"
                    "Content-Length: 0\r\n\r\n").encode()
        return (f"HTTP/1.1 200 OK\r\nServer: {sw}\r\nDate: {date}\r\nContent-Type: text/html\r\n"
                f"Set-Cookie: SESSIONID={h:016x}; path=/\r\n\r\n<html><head><title>{sw}</title></head>"
                ).encode()
    if proto == TLS:
        # the TLS grabber's text: protocol and cipher, the certificate's names, then what the port
        # answered through TLS (nothing here: the grabber sent no request)
        if choice == KEYWORD:
            cn = (keyword or "").removeprefix("CN=").split(",")[0] or f"{host}.local"
            return (f"TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256\nsubject: CN={cn}, O={sw}\n"
                    f"issuer: CN={cn}, O={sw}\nsan: DNS:{host}.local\nserial: {h:016x}\n").encode()
        return (f"TLS TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384\nsubject: {sw}\nissuer: {sw}\n"
                f"serial: {h:016x}\n").encode()
    if proto == FTP:
        return f"220 {host} {sw} FTP server ready.\r\n".encode()
    if proto == SSH:
        return f"SSH-2.0-{sw}\r\n".encode()
    if proto == TELNET:
        return f"\r\n{host} {sw}\r\n".encode()
    if proto == SMTP:
        return f"220 {host}.example.jp {sw}; {date}\r\n".encode()
    if proto == POP3:
        return f"+OK {sw} <{h:016x}.{EPOCH_UNIX + int(t)}@{host}>\r\n".encode()
    if proto == IMAP:
        return f"* OK [CAPABILITY IMAP4rev1 IDLE] {host} {sw}\r\n".encode()
    if proto == RTSP:
        return f"RTSP/1.0 200 OK\r\nCSeq: 1\r\nServer: {sw}\r\nDate: {date}\r\nSession: {h:016x}\r\n\r\n".encode()
    if proto == SIP:
        return f"SIP/2.0 200 OK\r\nServer: {sw}\r\nCall-ID: {h:016x}@{host}\r\n\r\n".encode()
    return f"{sw} {host}\r\n".encode()


#: Typical response sizes (bytes) per protocol, for the traffic model's ACK count (Ethernet MSS).
RESPONSE_BYTES = np.array([40, 600, 1800, 60, 40, 60, 80, 70, 80, 150, 150], dtype=np.int32)


def keyword_for(keywords: Sequence[str], pick: int) -> str:
    """The keyword a device instance shows: one of its model's keywords, fixed per instance."""
    return keywords[pick % len(keywords)] if keywords else ""
