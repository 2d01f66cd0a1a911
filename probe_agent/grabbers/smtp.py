"""SMTP: the ``220`` greeting, read, never answered (no EHLO)."""

from __future__ import annotations

from probe_agent.grabbers.ftp import REPLY
from probe_agent.grabbers.greeting import GreetingGrabber


class SmtpGrabber(GreetingGrabber):
    name = "smtp"
    protocol = "smtp"

    def looks_right(self, greeting: bytes) -> bool:
        return REPLY.match(greeting) is not None
