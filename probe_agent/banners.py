"""What the banner grabber says to a service, and how it names what came back.

The agent reads what a service says on connect, or sends **one** harmless request to services that
speak only when asked. These are the only bytes it ever sends; there is no code path that sends a
user name, a password or any other credential, and no second request.

- Passive (greeting on connect): FTP, SSH, Telnet, SMTP, POP3, IMAP and anything unknown.
- HTTP ``GET /`` with the operator's contact string as User-Agent, on HTTP ports (and, after a
  silent passive wait, on unknown ports when ``ask_unknown`` is on: most IoT web UIs live there).
- RTSP ``OPTIONS`` on RTSP ports (cameras answer it without authentication).
- TLS on TLS ports (:mod:`probe_agent.grabbers.tls`): the handshake, then one ``GET /`` over it, or
  only the greeting on implicit-TLS mail ports.
- Telnet option negotiation is answered the way a client that wants nothing answers it: every
  ``DO`` with ``WONT`` and every ``WILL`` with ``DONT`` (:class:`TelnetRefuser`), so the server goes
  on to its banner and login prompt. These are the only bytes sent to a Telnet service: no
  terminal type, no user name, nothing in reply to the prompt.
"""

from __future__ import annotations

import enum

from probe_agent.grabbers import PORTS as GRABBER_PORTS
from probe_agent.grabbers import name_for_port
from scanflow.estimate import safe_text
from scanflow.fingerprint import is_telnet, strip_telnet


class Ask(enum.Enum):
    """How to get a banner from a port, in the terms of the simulated backend (``sim``), which does not
    speak the protocols; the connect and masscan backends use the grabbers (:mod:`probe_agent.grabbers`)."""

    LISTEN = "listen"          # wait for the greeting, send nothing
    HTTP = "http"              # send GET / at once
    RTSP = "rtsp"              # send OPTIONS at once
    LISTEN_THEN_HTTP = "listen-then-http"  # wait; if silent, send GET /


def _ports_of(*names: str) -> frozenset[int]:
    return frozenset(p for p, n in GRABBER_PORTS.items() if n in names)


#: Ports where the service speaks only when asked, and what to ask (from the grabber table).
HTTP_PORTS = _ports_of("http")
RTSP_PORTS = _ports_of("rtsp")
#: Ports whose services greet first (never sent anything but Telnet refusals).
GREETING_PORTS = _ports_of("telnet", "ssh", "ftp", "smtp", "pop3", "imap")
#: TLS ports: a handshake, then one GET / (``tls``) or the greeting (implicit-TLS mail ports).
TLS_PORTS = _ports_of("tls", "tls-greeting", "smtps", "imaps", "pop3s")


def ask_for(port: int, ask_unknown: bool = True) -> Ask:
    """The approach for ``port`` as the ``sim`` backend models it (TLS ports: the greeting)."""
    name = name_for_port(port, ask_unknown)
    if name == "rtsp":
        return Ask.RTSP
    if name == "http":
        return Ask.HTTP
    if name == "unknown":
        return Ask.LISTEN_THEN_HTTP
    return Ask.LISTEN


def _host_header(ip: str, port: int, default_port: int = 80) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return host if port == default_port else f"{host}:{port}"


def http_request(ip: str, port: int, contact: str, default_port: int = 80) -> bytes:
    """``GET /`` naming the operator in User-Agent; ``Connection: close`` so the server ends it.
    ``default_port``: the scheme's port, left out of ``Host`` (80, or 443 over TLS)."""
    return (f"GET / HTTP/1.1\r\nHost: {_host_header(ip, port, default_port)}\r\nUser-Agent: {contact}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii")


def rtsp_request(ip: str, port: int, contact: str) -> bytes:
    """RTSP ``OPTIONS`` (lists the methods; needs no authentication on any camera we know)."""
    host = f"[{ip}]" if ":" in ip else ip
    return (f"OPTIONS rtsp://{host}:{port}/ RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: {contact}\r\n\r\n"
            ).encode("ascii")


def request_for(ask: Ask, ip: str, port: int, contact: str) -> tuple[bytes, str] | None:
    """The request bytes and protocol name for an approach that sends one, else None."""
    if ask in (Ask.HTTP, Ask.LISTEN_THEN_HTTP):
        return http_request(ip, port, contact), "http"
    if ask is Ask.RTSP:
        return rtsp_request(ip, port, contact), "rtsp"
    return None


def identify(banner: bytes) -> str | None:
    """The protocol a greeting belongs to (ssh, ftp, smtp, pop3, imap, telnet, http, rtsp), or None."""
    head = banner[:64]
    if head.startswith(b"SSH-"):
        return "ssh"
    if head.startswith(b"HTTP/"):
        return "http"
    if head.startswith(b"RTSP/"):
        return "rtsp"
    if head.startswith(b"+OK"):
        return "pop3"
    if head.startswith(b"* OK") or head.startswith(b"* PREAUTH"):
        return "imap"
    if head[:1] == b"\xff" and len(head) > 1 and head[1] in (0xFB, 0xFC, 0xFD, 0xFE):
        return "telnet"
    if head.startswith(b"220"):
        lowered = head.lower()
        if b"ftp" in lowered:
            return "ftp"
        if b"smtp" in lowered or b"esmtp" in lowered or b"mail" in lowered:
            return "smtp"
        return "ftp" if b"(" in head else "smtp"
    return None


# -- Telnet ----------------------------------------------------------------------------------------

IAC, DONT, DO, WONT, WILL, SB, SE = 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0xFA, 0xF0
#: Refusals sent per connection at most (a server that keeps asking gets no more answers).
MAX_TELNET_REPLIES = 64


class TelnetRefuser:
    """Answers a Telnet server's option negotiation as a client that wants no option (RFC 854/1143):
    ``DO x`` -> ``WONT x``, ``WILL x`` -> ``DONT x``; ``DONT``/``WONT`` need no answer (refused options
    are off already). Each (verb, option) is answered once, at most :data:`MAX_TELNET_REPLIES` in
    all, so a server that repeats itself cannot start a loop.

    Feed it every chunk read from the connection, in order; :meth:`feed` returns the bytes to send
    back (often empty). It answers only streams whose first bytes are a Telnet option command
    (:func:`scanflow.fingerprint.is_telnet`): 0xFF in any other protocol is data, not a question.
    Commands split across chunks are kept until complete. The replies never contain anything but
    ``IAC WONT|DONT option``: no terminal type, window size, user name or password.
    """

    def __init__(self) -> None:
        self._active: bool | None = None      # decided by the first three bytes
        self._pending = b""
        self._answered: set[tuple[int, int]] = set()
        self.replies = 0

    @property
    def active(self) -> bool:
        """True once the stream has shown itself to be Telnet."""
        return bool(self._active)

    def feed(self, chunk: bytes) -> bytes:
        """The refusals owed for ``chunk`` (b"" when none or the stream is not Telnet)."""
        if self._active is False or not chunk:
            return b""
        data = self._pending + bytes(chunk)
        self._pending = b""
        if self._active is None:
            if len(data) < 3 and data[:1] == b"\xff":    # too short to tell: wait for the next chunk
                self._pending = data
                return b""
            self._active = is_telnet(data)
            if not self._active:
                return b""
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            j = data.find(b"\xff", i)
            if j < 0:
                break
            if j + 1 >= n:                        # IAC at the end: the command comes next chunk
                self._pending = data[j:]
                break
            verb = data[j + 1]
            if verb in (DO, WILL, DONT, WONT):
                if j + 2 >= n:
                    self._pending = data[j:]
                    break
                option = data[j + 2]
                i = j + 3
                if verb in (DO, WILL) and (verb, option) not in self._answered \
                        and self.replies < MAX_TELNET_REPLIES:
                    self._answered.add((verb, option))
                    self.replies += 1
                    out += bytes((IAC, WONT if verb == DO else DONT, option))
            elif verb == SB:                      # subnegotiation: nothing to answer; skip to IAC SE
                end = data.find(b"\xff\xf0", j + 2)
                if end < 0:
                    self._pending = data[j:]
                    break
                i = end + 2
            else:                                 # IAC IAC (data) or a two-byte command
                i = j + 2
        if len(self._pending) > 4096:             # an endless subnegotiation: stop keeping it
            self._pending = b""
        return bytes(out)


def banner_line(banner: bytes | None, limit: int = 80) -> str:
    """The first non-blank line of a banner as safe printable text, Telnet negotiation removed
    (what ``scanflow agent --scan`` prints per response)."""
    text = strip_telnet(banner or b"")
    for line in text.splitlines():
        if line.strip():
            return safe_text(line.strip(), limit)
    return ""
