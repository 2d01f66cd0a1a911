"""What the banner grabber says to a service, and how it names what came back.

The agent reads what a service says on connect, or sends **one** harmless request to services that
speak only when asked. These are the only bytes it ever sends; there is no code path that sends a
user name, a password or any other credential, and no second request.

- Passive (greeting on connect): FTP, SSH, Telnet, SMTP, POP3, IMAP and anything unknown.
- HTTP ``GET /`` with the operator's contact string as User-Agent, on HTTP ports (and, after a
  silent passive wait, on unknown ports when ``ask_unknown`` is on: most IoT web UIs live there).
- RTSP ``OPTIONS`` on RTSP ports (cameras answer it without authentication).
"""

from __future__ import annotations

import enum


class Ask(enum.Enum):
    """How to get a banner from a port."""

    LISTEN = "listen"          # wait for the greeting, send nothing
    HTTP = "http"              # send GET / at once
    RTSP = "rtsp"              # send OPTIONS at once
    LISTEN_THEN_HTTP = "listen-then-http"  # wait; if silent, send GET /


#: Ports where the service speaks only when asked, and what to ask.
HTTP_PORTS = frozenset({80, 81, 82, 88, 591, 2082, 5000, 5001, 7547, 8000, 8008, 8010, 8080, 8081,
                        8082, 8088, 8181, 8443, 8888, 9000, 9090, 49152})
RTSP_PORTS = frozenset({554, 8554, 10554})
#: Ports whose services greet first (never sent anything).
GREETING_PORTS = frozenset({21, 22, 23, 25, 110, 143, 465, 587, 993, 995, 2222, 2323})
#: TLS ports: the grabber does not speak TLS, so it only listens (and records the SYN-ACK).
TLS_PORTS = frozenset({443, 465, 636, 993, 995, 8443})


def ask_for(port: int, ask_unknown: bool = True) -> Ask:
    """The approach for ``port``: greeting ports and TLS ports listen, HTTP and RTSP ports ask."""
    if port in RTSP_PORTS:
        return Ask.RTSP
    if port in TLS_PORTS or port in GREETING_PORTS:
        return Ask.LISTEN
    if port in HTTP_PORTS:
        return Ask.HTTP
    return Ask.LISTEN_THEN_HTTP if ask_unknown else Ask.LISTEN


def _host_header(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return host if port == 80 else f"{host}:{port}"


def http_request(ip: str, port: int, contact: str) -> bytes:
    """``GET /`` naming the operator in User-Agent; ``Connection: close`` so the server ends it."""
    return (f"GET / HTTP/1.1\r\nHost: {_host_header(ip, port)}\r\nUser-Agent: {contact}\r\n"
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
