"""HTTP: one ``GET /`` naming the operator (User-Agent), ``Connection: close``; the answer."""

from __future__ import annotations

from probe_agent.banners import http_request
from probe_agent.grabbers import Grabber, Outcome, Status
from probe_agent.grabbers.conn import Conn


async def get_root(conn: Conn, default_port: int = 80) -> tuple[Status, bytes]:
    """Send ``GET /`` (the connection's one request) and read the answer: (status, bytes)."""
    if not await conn.request(http_request(conn.ip, conn.port, conn.contact, default_port)):
        return Status.IO_ERROR, b""
    raw = await conn.read_banner(conn.remaining())
    if not raw:
        return (Status.NO_BANNER if conn.eof else Status.TIMEOUT), b""
    return (Status.SUCCESS if raw.startswith(b"HTTP/") else Status.PROTOCOL_ERROR), raw


class HttpGrabber(Grabber):
    name = "http"

    async def grab(self, conn: Conn) -> Outcome:
        status, raw = await get_root(conn)
        return Outcome(status, raw or None, "http")
