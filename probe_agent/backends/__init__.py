"""Scanner backends: a small plug-in interface, registered explicitly by name.

A backend turns the probes of one command into :class:`ProbeResult` s. The agent core owns everything
else: target order, the rate and politeness caps, the allowlist and exclusions, events and
accounting. A backend gets a :class:`Job` (one command's run) and either

- pulls paced, filtered probes one at a time from :meth:`Job.probes` (``connect``), or
- takes the eligible addresses in chunks from :meth:`Job.address_chunks` and sends them itself
  at the job's rate (``masscan``), or
- takes filtered probe blocks from :meth:`Job.blocks` and answers them in virtual time (``sim``).

Results go back through :meth:`Job.report`; a result whose ``kind`` is set becomes a ScanEvent.

To add a backend: write a module with a :class:`Backend` subclass and add it to :data:`BACKENDS`.
"""

from __future__ import annotations

import abc
import enum
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, ClassVar, Iterator

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from probe_agent.settings import AgentSettings
    from probe_agent.targets import ProbeBlock

#: ADD YOUR BACKEND HERE: name -> "module:Class". Modules are imported when a backend is chosen.
BACKENDS: dict[str, str] = {
    "connect": "probe_agent.backends.connect:ConnectBackend",
    "masscan": "probe_agent.backends.masscan:MasscanBackend",
    "sim": "probe_agent.backends.sim:SimBackend",
}


class BackendError(RuntimeError):
    """A backend cannot run here (missing tool, privilege or setting); the message says the fix."""


class ProbeStatus(enum.Enum):
    """How one probe ended (a closed set, like ZGrab2's status)."""

    OPEN = "open"                  # connection established / SYN-ACK seen
    CLOSED = "closed"              # RST: nothing listens
    TIMEOUT = "timeout"            # no answer before the timeout (filtered or down)
    UNREACHABLE = "unreachable"    # ICMP unreachable / no route
    ERROR = "error"                # local error (out of sockets, ...)


@dataclass
class Probe:
    """One (address, port) probe of a command's target ``target`` (index), at job time ``t``."""

    ip: str
    port: int
    target: int
    t: float = 0.0


@dataclass
class ProbeResult:
    """What one probe (or one phase of it) saw and cost.

    ``kind`` is ``"SYN_ACK"`` or ``"BANNER"`` when the result is an event, None otherwise (a closed
    port, or a phase that only accounts packets). ``packets`` and ``bytes`` are what the agent sent
    for it at the IP layer. ``timestamp_us`` is when the answer came (job clock, microseconds).
    """

    ip: str
    port: int
    status: ProbeStatus
    kind: str | None = None
    banner: bytes | None = None
    banner_truncated: bool = False
    protocol: str | None = None
    #: The grabber that ran (v2 ``protocol``), how it ended (v2 ``status``), its TLS facts (v2 ``tls``).
    grabber: str | None = None
    grab_status: str | None = None
    tls: dict | None = None
    ttl: int | None = None
    window: int | None = None
    packets: int = 1
    bytes: int = 0
    timestamp_us: int = 0
    error: str | None = None
    target: int | None = None


@dataclass
class AddressChunk:
    """Eligible addresses of a job for a batch backend: inclusive integer ``ranges`` (IPv4), their
    count per target index, and the ports."""

    ranges: list[tuple[int, int]]
    per_target: dict[int, int]
    ports: list[int]

    @property
    def addresses(self) -> int:
        """Number of addresses in the chunk."""
        return sum(hi - lo + 1 for lo, hi in self.ranges)


class Job(abc.ABC):
    """One command being run, as a backend sees it (implemented by the agent core)."""

    settings: "AgentSettings"
    rate_pps: float
    #: Virtual-time backends set when the scan ended (job clock, microseconds); None: now.
    end_us: int | None = None

    @abc.abstractmethod
    def probes(self) -> AsyncIterator[Probe]:
        """Paced, filtered probes in the command's pseudorandom order (waits for the rate caps)."""

    @abc.abstractmethod
    def blocks(self) -> Iterator[tuple["ProbeBlock", "np.ndarray"]]:
        """Filtered probe blocks with the addresses as integers, unpaced (virtual-time backends)."""

    @abc.abstractmethod
    def address_chunks(self, max_probes: int) -> Iterator[AddressChunk]:
        """Eligible addresses (IPv4) in chunks of at most ``max_probes`` probes, counted as probed."""

    @abc.abstractmethod
    async def pace(self, ip: str) -> bool:
        """Wait for the rate caps before one extra probe of ``ip`` (e.g. a second-phase grab);
        False when it must not be sent after all (excluded meanwhile, or the job is stopping)."""

    @abc.abstractmethod
    def report(self, result: ProbeResult) -> None:
        """Record a result: event if ``kind`` is set, accounting, metrics."""

    @abc.abstractmethod
    def account(self, target: int, packets: int, nbytes: int) -> None:
        """Add packets and bytes sent for ``target`` (batch backends that count in bulk)."""

    @abc.abstractmethod
    def excluded_networks(self) -> list[str]:
        """The exclusion list in force, as CIDR text (for tools that take their own list)."""

    @abc.abstractmethod
    def target_of(self, ip: str) -> int | None:
        """Index of the command target that ``ip`` belongs to, or None."""

    @property
    @abc.abstractmethod
    def stopping(self) -> bool:
        """True once the job should stop early (agent shutting down)."""

    @property
    @abc.abstractmethod
    def start_us(self) -> int:
        """Job clock at the start, microseconds since the Unix epoch (virtual for ``sim``)."""


class Backend(abc.ABC):
    """A scanner backend. One instance serves every job of an agent, possibly concurrently."""

    name: ClassVar[str]
    #: True when probing needs root (raw sockets); the agent checks it at start.
    needs_root: ClassVar[bool] = False
    #: True when the backend runs in virtual time: jobs are not paced by the wall clock.
    virtual_time: ClassVar[bool] = False

    def __init__(self, settings: "AgentSettings"):
        self.settings = settings

    async def open(self) -> None:
        """Check prerequisites and acquire resources; raise :class:`BackendError` with the fix."""

    @abc.abstractmethod
    async def run(self, job: Job) -> None:
        """Probe everything ``job`` offers (stop early when ``job.stopping``), reporting results."""

    async def close(self) -> None:
        """Release resources."""


def backend_names() -> list[str]:
    """The registered backend names."""
    return sorted(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; ``KeyError`` lists the known ones."""
    try:
        module_name, _, attr = BACKENDS[name].partition(":")
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(backend_names())}") from None
    return getattr(importlib.import_module(module_name), attr)


def make_backend(settings: "AgentSettings") -> Backend:
    """An instance of the configured backend."""
    return backend_class(settings.backend)(settings)
