"""RTSP: one ``OPTIONS`` (lists the methods; no camera we know asks for credentials for it)."""

from __future__ import annotations

from probe_agent.banners import rtsp_request
from probe_agent.grabbers import Grabber, Outcome, Status
from probe_agent.grabbers.conn import Conn


class RtspGrabber(Grabber):
    name = "rtsp"

    async def grab(self, conn: Conn) -> Outcome:
        if not await conn.request(rtsp_request(conn.ip, conn.port, conn.contact)):
            return Outcome(Status.IO_ERROR, None, "rtsp", detail="request not sent")
        raw = await conn.read_banner(conn.remaining())
        if not raw:
            return Outcome(Status.NO_BANNER if conn.eof else Status.TIMEOUT, None, "rtsp")
        return Outcome(Status.SUCCESS if raw.startswith(b"RTSP/") else Status.PROTOCOL_ERROR, raw, "rtsp")
