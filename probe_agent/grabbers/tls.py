"""TLS: the handshake (any certificate accepted, nothing validated), its facts, then one ``GET /``
over it (``tls``) or the greeting of an implicit-TLS service (``smtps``, ``imaps``, ``pop3s``,
``tls-greeting``).

The banner is the rendering of the certificate facts (:func:`~probe_agent.grabbers.certs.render_tls_block`),
a blank line and the answer (the HTTP response, the greeting); just the TLS lines when nothing came.
The structured facts go in the v2 ScanEvent's ``tls`` record.
"""

from __future__ import annotations

from probe_agent.grabbers import Grabber, Outcome, Status
from probe_agent.grabbers.certs import render_tls_block, tls_record
from probe_agent.grabbers.conn import Conn, TlsError
from probe_agent.grabbers.http import get_root


class TlsHttpGrabber(Grabber):
    name = "tls"

    async def after_handshake(self, conn: Conn) -> bytes:
        """What the service says over TLS."""
        return (await get_root(conn, default_port=443))[1]

    async def grab(self, conn: Conn) -> Outcome:
        try:
            version, cipher, der, chain = await conn.start_tls()
        except TlsError as exc:
            return Outcome(Status.TLS_ERROR, None, "tls", detail=str(exc))
        tls = tls_record(version, cipher, der, chain)
        block = render_tls_block(tls).encode("utf-8", "backslashreplace")
        body = await self.after_handshake(conn)
        return Outcome(Status.SUCCESS, block + b"\n" + body if body else block, "tls", tls)


class TlsGreetingGrabber(TlsHttpGrabber):
    name = "tls-greeting"

    async def after_handshake(self, conn: Conn) -> bytes:
        return await conn.read_banner(conn.passive_wait_s)


class SmtpsGrabber(TlsGreetingGrabber):
    name = "smtps"


class ImapsGrabber(TlsGreetingGrabber):
    name = "imaps"


class Pop3sGrabber(TlsGreetingGrabber):
    name = "pop3s"
