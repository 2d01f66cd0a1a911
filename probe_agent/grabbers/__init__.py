"""Banner grabbers as plug-ins: one module per protocol, registered by name.

A grabber decides *what to say* to one open port and *how to read* the answer; the framework
(:mod:`probe_agent.grabbers.conn`) owns everything that keeps a grab safe and bounded: the socket,
the deadlines, the byte cap, TLS, and the rule that at most **one** request is sent per connection
(:class:`OneRequestRule`). A grabber gets a :class:`~probe_agent.grabbers.conn.Conn` and returns a
:class:`Outcome` whose :class:`Status` is one of a closed set.

=================  ===========================================================================
``http``           ``GET /`` at once (contact string as User-Agent)
``rtsp``           ``OPTIONS`` at once
``tls``            TLS handshake (no validation), then one ``GET /`` over it; the banner is the
                   certificate facts (:func:`~probe_agent.grabbers.certs.render_tls_block`)
                   followed by the HTTP answer
``smtps`` ``imaps`` ``pop3s`` ``tls-greeting``   TLS handshake, then the greeting only
``telnet``         read; option negotiation refused (DO->WONT, WILL->DONT); the stored banner is the
                   text after negotiation (banner and login prompt); nothing else is ever sent
``ssh`` ``ftp`` ``smtp`` ``pop3`` ``imap``   read the greeting (protocol-error when it does not
                   look like the protocol; the bytes are kept)
``greeting``       read whatever comes (Telnet handled as above)
``unknown``        ``greeting``; if silent and ``ask_unknown``, one ``GET /``
=================  ===========================================================================

To add a grabber: write a module with a :class:`Grabber` subclass, add it to :data:`GRABBERS` and
give it ports in :data:`PORTS`.
"""

from __future__ import annotations

import abc
import enum
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover - typing only
    from probe_agent.grabbers.conn import Conn


class Status(enum.Enum):
    """How one grab ended (a closed set; the v2 ScanEvent's ``status``)."""

    SUCCESS = "SUCCESS"                        # the service said something the grabber understood
    NO_BANNER = "NO_BANNER"                    # connected, nothing said before the timeouts
    TIMEOUT = "TIMEOUT"                        # asked, no answer before the deadline
    CONNECTION_REFUSED = "CONNECTION_REFUSED"  # RST to the SYN (no event is published for it)
    PROTOCOL_ERROR = "PROTOCOL_ERROR"          # an answer, but not of the expected protocol (kept)
    TLS_ERROR = "TLS_ERROR"                    # the TLS handshake failed
    IO_ERROR = "IO_ERROR"                      # reset or another socket error before any answer


class OneRequestRule(RuntimeError):
    """A grabber tried to send a second request on one connection (a programming error)."""


@dataclass
class Outcome:
    """What a grabber got: ``status``, the banner bytes (before the cap; the framework cuts),
    ``banner_protocol`` (the v1 field), and ``tls`` facts (the v2 ``tls`` record) when TLS was used."""

    status: Status
    banner: bytes | None = None
    banner_protocol: str | None = None
    tls: dict[str, Any] | None = None
    #: The grabber's registry name (set by the framework).
    grabber: str | None = None
    detail: str | None = field(default=None, compare=False)


class Grabber(abc.ABC):
    """One protocol's grab. Instances are stateless and shared by every connection."""

    #: Registry name, written into the v2 ScanEvent's ``protocol``.
    name: ClassVar[str]

    @abc.abstractmethod
    async def grab(self, conn: "Conn") -> Outcome:
        """Talk to the service through ``conn`` (at most one ``conn.request``) and say what came."""


#: ADD YOUR GRABBER HERE: name -> "module:Class". Modules are imported on first use.
GRABBERS: dict[str, str] = {
    "http": "probe_agent.grabbers.http:HttpGrabber",
    "rtsp": "probe_agent.grabbers.rtsp:RtspGrabber",
    "tls": "probe_agent.grabbers.tls:TlsHttpGrabber",
    "tls-greeting": "probe_agent.grabbers.tls:TlsGreetingGrabber",
    "smtps": "probe_agent.grabbers.tls:SmtpsGrabber",
    "imaps": "probe_agent.grabbers.tls:ImapsGrabber",
    "pop3s": "probe_agent.grabbers.tls:Pop3sGrabber",
    "telnet": "probe_agent.grabbers.telnet:TelnetGrabber",
    "ssh": "probe_agent.grabbers.ssh:SshGrabber",
    "ftp": "probe_agent.grabbers.ftp:FtpGrabber",
    "smtp": "probe_agent.grabbers.smtp:SmtpGrabber",
    "pop3": "probe_agent.grabbers.pop3:Pop3Grabber",
    "imap": "probe_agent.grabbers.imap:ImapGrabber",
    "greeting": "probe_agent.grabbers.greeting:GreetingGrabber",
    "unknown": "probe_agent.grabbers.greeting:UnknownGrabber",
}

#: Port -> grabber name. Ports not listed get ``unknown`` (or ``greeting`` without ``ask_unknown``).
PORTS: dict[int, str] = {
    **{p: "http" for p in (80, 81, 82, 88, 591, 2082, 5000, 5001, 7547, 8000, 8008, 8010, 8080, 8081,
                           8082, 8088, 8181, 8888, 9000, 9090, 49152)},
    **{p: "rtsp" for p in (554, 8554, 10554)},
    **{p: "tls" for p in (443, 4443, 7443, 8443, 9443, 10443)},
    465: "smtps", 993: "imaps", 995: "pop3s", 636: "tls-greeting",
    23: "telnet", 2323: "telnet",
    22: "ssh", 2222: "ssh",
    21: "ftp",
    25: "smtp", 587: "smtp",
    110: "pop3",
    143: "imap",
}


def grabber_names() -> list[str]:
    """The registered grabber names."""
    return sorted(GRABBERS)


def name_for_port(port: int, ask_unknown: bool = True) -> str:
    """The grabber registered for ``port``."""
    name = PORTS.get(port)
    if name is not None:
        return name
    return "unknown" if ask_unknown else "greeting"


_INSTANCES: dict[str, Grabber] = {}


def get(name: str) -> Grabber:
    """The (shared) grabber registered as ``name``; ``KeyError`` lists the known ones."""
    grabber = _INSTANCES.get(name)
    if grabber is None:
        try:
            module_name, _, attr = GRABBERS[name].partition(":")
        except KeyError:
            raise KeyError(f"unknown grabber {name!r}; known: {', '.join(grabber_names())}") from None
        grabber = _INSTANCES[name] = getattr(importlib.import_module(module_name), attr)()
    return grabber


def load_all() -> None:
    """Import and instantiate every registered grabber, and make the TLS client context, now: done
    when a backend starts, so that no import or setup (``cryptography`` takes ~0.1 s of CPU) blocks
    the event loop in the middle of a scan, where it would hold back other probes' connects past
    their timeouts."""
    for name in GRABBERS:
        get(name)
    from probe_agent.grabbers.conn import _context

    _context()


def for_port(port: int, ask_unknown: bool = True) -> Grabber:
    """The grabber for ``port``."""
    return get(name_for_port(port, ask_unknown))
