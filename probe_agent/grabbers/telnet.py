"""Telnet: option negotiation refused, then the banner and login prompt, stored as text.

The framework answers every ``DO`` with ``WONT`` and every ``WILL`` with ``DONT`` (each once,
:class:`probe_agent.banners.TelnetRefuser`): a telnetd that waits for its answers then shows its
banner and prompt. Those refusals are the only bytes ever sent, and only before a prompt shows (a telnetd that
sends its negotiation and login prompt at once gets nothing at all); nothing answers the prompt. The
stored banner is the text after negotiation (``BusyBox v1.19.4 ... (none) login: ``).
"""

from __future__ import annotations

from probe_agent.banners import identify
from probe_agent.grabbers import Outcome, Status
from probe_agent.grabbers.conn import Conn
from probe_agent.grabbers.greeting import GreetingGrabber


class TelnetGrabber(GreetingGrabber):
    name = "telnet"

    def outcome(self, conn: Conn, raw: bytes) -> Outcome:
        out = super().outcome(conn, raw)
        if out.banner and not conn.telnet.active:
            # No negotiation: a plain-text telnetd (or another protocol on a Telnet port).
            out.banner_protocol = identify(raw) or "telnet"
            out.status = Status.SUCCESS
        return out
