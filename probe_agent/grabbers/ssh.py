"""SSH: the server's identification string (RFC 4253 4.2), read, never answered."""

from __future__ import annotations

from probe_agent.grabbers.greeting import GreetingGrabber


class SshGrabber(GreetingGrabber):
    name = "ssh"
    protocol = "ssh"

    def looks_right(self, greeting: bytes) -> bool:
        # Servers may send other lines before the identification line (RFC 4253 4.2).
        return greeting.startswith(b"SSH-") or b"\nSSH-" in greeting[:1024]
