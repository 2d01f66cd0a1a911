"""FTP: the ``220`` (or ``120``/``421``) greeting, read, never answered (no USER, ever)."""

from __future__ import annotations

import re

from probe_agent.grabbers.greeting import GreetingGrabber

REPLY = re.compile(rb"^[1-5][0-9]{2}[ -]")


class FtpGrabber(GreetingGrabber):
    name = "ftp"
    protocol = "ftp"

    def looks_right(self, greeting: bytes) -> bool:
        return REPLY.match(greeting) is not None
