"""POP3: the ``+OK`` greeting, read, never answered (no USER)."""

from __future__ import annotations

from probe_agent.grabbers.greeting import GreetingGrabber


class Pop3Grabber(GreetingGrabber):
    name = "pop3"
    protocol = "pop3"

    def looks_right(self, greeting: bytes) -> bool:
        return greeting.startswith((b"+OK", b"-ERR"))
