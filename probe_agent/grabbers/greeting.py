"""Greeting readers: services that speak first (and the generic reader for unknown ports).

:class:`GreetingGrabber` sends nothing (but Telnet refusals, see :mod:`probe_agent.grabbers.telnet`):
it reads what the service says within the passive wait. A stream that starts with Telnet option
negotiation is stored as its text (:func:`scanflow.fingerprint.strip_telnet`); when there is no text
after the negotiation the raw bytes are kept, so the event still shows a Telnet service.
Protocol modules (ssh, ftp, smtp, pop3, imap) say what a right greeting looks like; a greeting that
does not is kept with status PROTOCOL_ERROR.
"""

from __future__ import annotations

from typing import ClassVar

from probe_agent.banners import http_request, identify
from probe_agent.grabbers import Grabber, Outcome, Status
from probe_agent.grabbers.conn import Conn
from scanflow.fingerprint import strip_telnet


class GreetingGrabber(Grabber):
    """Read what the service says on connect; send nothing."""

    name = "greeting"
    #: The protocol written to ``banner_protocol`` when the greeting looks right (None: identify it).
    protocol: ClassVar[str | None] = None

    def looks_right(self, greeting: bytes) -> bool:
        """True when ``greeting`` is what this protocol's servers say (any greeting, here)."""
        return True

    async def grab(self, conn: Conn) -> Outcome:
        raw = await conn.read_banner(conn.passive_wait_s, telnet=True)
        return self.outcome(conn, raw)

    def outcome(self, conn: Conn, raw: bytes) -> Outcome:
        if not raw:
            return Outcome(Status.NO_BANNER)
        if conn.telnet.active:
            text = strip_telnet(raw)
            return Outcome(Status.SUCCESS, text or raw, "telnet")
        if self.looks_right(raw):
            return Outcome(Status.SUCCESS, raw, self.protocol or identify(raw))
        return Outcome(Status.PROTOCOL_ERROR, raw, identify(raw))


class UnknownGrabber(GreetingGrabber):
    """An unknown port: the greeting; when silent for the passive wait (and ``ask_unknown``), one
    ``GET /`` (most IoT web interfaces live on odd ports)."""

    name = "unknown"

    async def grab(self, conn: Conn) -> Outcome:
        raw = await conn.read_banner(conn.passive_wait_s, telnet=True)
        if raw or conn.eof or not conn.ask_unknown:
            return self.outcome(conn, raw)
        if not await conn.request(http_request(conn.ip, conn.port, conn.contact)):
            return Outcome(Status.IO_ERROR, detail="request not sent")
        raw = await conn.read_banner(conn.remaining())
        if not raw:
            return Outcome(Status.NO_BANNER if conn.eof else Status.TIMEOUT, None, "http")
        return Outcome(Status.SUCCESS, raw, identify(raw) or "http")
