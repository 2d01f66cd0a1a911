"""IMAP: the ``* OK`` greeting, read, never answered (no LOGIN, no CAPABILITY)."""

from __future__ import annotations

from probe_agent.grabbers.greeting import GreetingGrabber


class ImapGrabber(GreetingGrabber):
    name = "imap"
    protocol = "imap"

    def looks_right(self, greeting: bytes) -> bool:
        return greeting.startswith((b"* OK", b"* PREAUTH", b"* BYE"))
