"""The grab framework: one connected socket, its deadline, its byte cap, TLS, and the one-request rule.

A grabber never touches the socket. It calls

- :meth:`Conn.read_banner` — wait ``first_timeout`` for the first bytes, then keep reading while
  data flows (``idle_gap_s`` between chunks), up to the banner cap (+1 byte, to know it was cut) or
  the connection's deadline; with ``telnet=True`` a Telnet option negotiation is answered with
  refusals only (:class:`probe_agent.banners.TelnetRefuser`);
- :meth:`Conn.request` — send the one request; a second call raises :class:`OneRequestRule`;
  nothing at all is sent once the service has shown a login or shell prompt;
- :meth:`Conn.start_tls` — a TLS handshake over the socket (in memory BIOs, so the kernel's TCP
  counters keep measuring what was sent), certificates accepted unvalidated; afterwards reads and
  the request go through TLS.

The deadline is ``read_timeout_s`` from the moment the connection is handed over, for everything:
handshake, request and answer. Nothing is sent on close (no TLS close_notify, no Telnet reply).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time

from probe_agent.banners import DONT, IAC, WONT, TelnetRefuser
from probe_agent.grabbers import OneRequestRule
from scanflow.fingerprint import strip_telnet


#: The end of a login, password or shell prompt, after the Telnet commands are removed.
_PROMPT = re.compile(rb"(?:(?:login|username|user name|user|password|passwd)\s*:|[#$>%])\s*$", re.IGNORECASE)


def prompt_shown(data: bytes | bytearray) -> bool:
    """True when what a service said so far ends with a prompt (``(none) login: ``, ``Password:``,
    a shell's ``# ``): from then on nothing is sent to it."""
    return _PROMPT.search(strip_telnet(bytes(data)).rstrip(b"\x00")) is not None


class TlsError(Exception):
    """The TLS handshake failed (the message says how)."""


def _now_us() -> int:
    return time.time_ns() // 1000


def client_context() -> ssl.SSLContext:
    """A client context that sees every server: no certificate or host name check, every protocol
    version and cipher OpenSSL still has (old devices speak TLS 1.0 with SHA-1 certificates)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):  # pragma: no cover - an OpenSSL without them
        pass
    return ctx


_CONTEXT: ssl.SSLContext | None = None


def _context() -> ssl.SSLContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = client_context()
    return _CONTEXT


class Conn:
    """A connected, non-blocking socket to (``ip``, ``port``), as grabbers see it."""

    def __init__(self, sock: socket.socket, ip: str, port: int, *, contact: str, cap: int,
                 read_timeout_s: float, passive_wait_s: float, idle_gap_s: float, ask_unknown: bool = True):
        self.sock, self.ip, self.port, self.contact = sock, ip, port, contact
        self.cap, self.passive_wait_s, self.idle_gap_s = cap, passive_wait_s, idle_gap_s
        self.ask_unknown = ask_unknown
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + read_timeout_s
        self.eof = False
        #: Wall clock (µs) of the first application byte received, 0 before.
        self.first_us = 0
        #: Requests sent (0 or 1) and the bytes of Telnet refusals sent.
        self.requests = 0
        self.negotiation_bytes = 0
        #: True once a read stopped at the cap (the service had more to say).
        self.cut = False
        #: True when a read failed with a socket error (a reset) rather than a clean end.
        self.reset = False
        #: True once the service showed a login, password or shell prompt (then nothing is sent).
        self.prompted = False
        self.telnet = TelnetRefuser()
        self._tls: ssl.SSLObject | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None

    # -- raw socket --------------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline - self.loop.time()

    async def _raw_recv(self, timeout: float, n: int = 65536) -> bytes | None:
        """One read: bytes, b"" at EOF (or a reset), None when ``timeout`` (or the deadline) passed."""
        timeout = min(timeout, self.remaining())
        if timeout <= 0:
            return None
        try:
            async with asyncio.timeout(timeout):
                chunk = await self.loop.sock_recv(self.sock, n)
        except (TimeoutError, asyncio.TimeoutError):
            return None
        except OSError:
            chunk = b""
            self.reset = True
        if not chunk:
            self.eof = True
        return chunk

    async def _raw_send(self, data: bytes) -> bool:
        try:
            async with asyncio.timeout(max(0.01, self.remaining())):
                await self.loop.sock_sendall(self.sock, data)
            return True
        except (OSError, TimeoutError, asyncio.TimeoutError):
            return False

    async def _flush_tls(self) -> bool:
        data = self._out.read() if self._out is not None else b""
        return await self._raw_send(data) if data else True

    # -- what grabbers use ---------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        """True after a successful :meth:`start_tls`."""
        return self._tls is not None

    async def start_tls(self) -> tuple[str, str, bytes | None, list[bytes]]:
        """Handshake; (protocol version, cipher, leaf DER or None, chain DERs where the ssl module
        gives them). Raises :class:`TlsError` on failure or at the deadline."""
        if self._tls is not None:
            raise RuntimeError("TLS is already on")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        # No SNI: the probe knows an address, not a name (and RFC 6066 forbids addresses in SNI).
        obj = _context().wrap_bio(incoming, outgoing, server_side=False, server_hostname=None)
        self._in, self._out = incoming, outgoing
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not await self._flush_tls():
                    raise TlsError("send failed during the handshake") from None
                data = await self._raw_recv(self.remaining(), 65536)
                if data is None:
                    raise TlsError("handshake timed out") from None
                if data:
                    incoming.write(data)
                else:
                    incoming.write_eof()
            except ssl.SSLError as exc:
                await self._flush_tls()          # an alert, if OpenSSL made one
                raise TlsError(f"handshake failed: {exc.reason or exc}") from None
        # The client's last flight (Finished) is not sent yet: it leaves with the request, in one
        # segment, or before the first wait for the server (recv flushes first).
        self._tls = obj
        self.eof = False
        der = obj.getpeercert(binary_form=True)
        chain: list[bytes] = []
        unverified = getattr(obj, "get_unverified_chain", None)   # Python 3.13+
        if unverified is not None:
            try:
                # DER certificates as the server sent them, the leaf first: keep the others.
                chain = [bytes(c) for c in (unverified() or []) if isinstance(c, (bytes, bytearray))]
            except (ssl.SSLError, ValueError, TypeError):  # the chain is a nicety; the leaf is what counts
                chain = []
            if chain and chain[0] == der:
                chain = chain[1:]
        version, cipher = obj.version() or "", (obj.cipher() or ("", "", 0))[0]
        return version, cipher, der, chain

    async def recv(self, timeout: float, n: int) -> bytes | None:
        """Application bytes (through TLS when on): bytes, b"" at EOF, None on timeout."""
        if self._tls is None:
            return await self._raw_recv(timeout, n)
        end = self.loop.time() + min(timeout, self.remaining())
        while True:
            try:
                data = self._tls.read(n)
                await self._flush_tls()
                if not data:
                    self.eof = True
                return data
            except ssl.SSLWantReadError:
                await self._flush_tls()
                raw = await self._raw_recv(end - self.loop.time())
                if raw is None:
                    return None
                if raw:
                    self._in.write(raw)
                else:
                    self._in.write_eof()
            except ssl.SSLError:             # close_notify, a ragged EOF or garbage: the end
                self.eof = True
                return b""

    async def request(self, data: bytes) -> bool:
        """Send the one request of this connection (through TLS when on); True when it went out.
        Refused (False) after a prompt: nothing answers a prompt."""
        if self.prompted:
            return False
        if self.requests:
            raise OneRequestRule(f"a second request to {self.ip}:{self.port} refused: one request "
                                 "per connection")
        self.requests = 1
        if self._tls is None:
            return await self._raw_send(data)
        self._tls.write(data)
        return await self._flush_tls()

    async def _refuse(self, refusals: bytes) -> None:
        # Only IAC WONT|DONT option triples ever leave here (never a terminal type or a credential).
        if len(refusals) % 3 or any(refusals[i] != IAC or refusals[i + 1] not in (WONT, DONT)
                                    for i in range(0, len(refusals), 3)):
            raise ValueError(f"not Telnet refusals: {refusals.hex()}")
        if await self._raw_send(refusals):
            self.negotiation_bytes += len(refusals)

    async def read_banner(self, first_timeout: float, *, telnet: bool = False) -> bytes:
        """What the service says: the first chunk within ``first_timeout``, then more while it flows,
        at most cap + 1 bytes (the framework cuts to the cap and marks the cut). Raw bytes: Telnet
        negotiation, if any, is still in them. Once the service shows a prompt (:func:`prompt_shown`)
        nothing more is sent, not even a refusal: a telnetd that sent its negotiation and its login
        prompt at once gets no answer at all."""
        buf = bytearray()
        timeout = first_timeout
        while len(buf) <= self.cap and not self.eof:
            chunk = await self.recv(timeout, self.cap + 1 - len(buf))
            if not chunk:
                break
            if not self.first_us:
                self.first_us = _now_us()
            buf += chunk
            if telnet and self._tls is None:
                refusals = self.telnet.feed(chunk)
                if refusals and not self.prompted:
                    self.prompted = prompt_shown(buf)
                if refusals and not self.prompted:
                    await self._refuse(refusals)
            timeout = self.idle_gap_s
        if len(buf) > self.cap:
            self.cut = True
        return bytes(buf)
