"""The grabbers against real services on 127.0.0.1: TLS (self-signed, expired), implicit TLS, a
failed handshake, and a BusyBox-like telnetd. Each server counts what it was sent, so the tests show
that one request at most goes out per connection and nothing follows a login prompt."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from probe_agent.backends import ProbeStatus
from probe_agent.backends.connect import ConnectGrabber
from probe_agent.banners import http_request
from probe_agent.settings import AgentSettings
from tests.support.certs import self_signed

CONTACT = "scanflow-integration-test (purpose and opt-out: https://lab.example/scan)"
HTTP_REPLY = (b"HTTP/1.1 200 OK\r\nServer: Dahua Rpc Server\r\nContent-Type: text/html\r\nContent-Length: 5\r\n"
              b"Connection: close\r\n\r\nhello")


def settings(**changes):
    opts = dict(backend="connect", allowlist=("127.0.0.1/32",), contact=CONTACT, connect_timeout_s=2.0,
                read_timeout_s=3.0, passive_wait_s=0.5, idle_gap_s=0.2)
    opts.update(changes)
    return AgentSettings(**opts).validate()


@pytest.fixture(scope="module")
def dahua_cert(tmp_path_factory):
    """An expired self-signed certificate naming a camera model, as cameras ship them."""
    return self_signed(tmp_path_factory.mktemp("cert"), "IPC-HFW1320S", "Dahua", dns=("ipc.local",),
                       ips=("192.168.1.108",), expired=True, serial=1000)


def server_context(cert, tls12_cipher: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    if tls12_cipher:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(tls12_cipher)
    return ctx


class Recorder:
    """What each connection to a test server sent, in order (application bytes)."""

    def __init__(self):
        self.connections: list[bytes] = []
        self.done = asyncio.Event()


async def read_all(reader, limit_s: float = 5.0) -> bytes:
    data = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), limit_s)
            if not chunk:
                return data
            data += chunk
    except (asyncio.TimeoutError, ConnectionError, ssl.SSLError):
        return data


def run(coro):
    return asyncio.run(coro)


def test_a_tls_camera_gives_its_certificate_facts_and_one_get_over_tls(dahua_cert):
    rec = Recorder()

    async def handler(reader, writer):
        head = b""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(HTTP_REPLY)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        rest = await read_all(reader)          # anything more, until the grabber closes
        rec.connections.append(head + rest)
        writer.close()
        rec.done.set()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0,
                                            ssl=server_context(dahua_cert, "ECDHE-RSA-AES128-GCM-SHA256"))
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await ConnectGrabber(settings()).grab("127.0.0.1", port, grabber="tls")
            await asyncio.wait_for(rec.done.wait(), 10)
        return port, result

    port, result = run(main())
    assert result.status is ProbeStatus.OPEN and result.kind == "BANNER"
    assert (result.grabber, result.grab_status, result.protocol) == ("tls", "SUCCESS", "tls")
    # The banner: the agreed rendering of the certificate, a blank line, the HTTP answer.
    assert result.banner == (b"TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256\n"
                             b"subject: CN=IPC-HFW1320S, O=Dahua\n"
                             b"issuer: CN=IPC-HFW1320S, O=Dahua\n"
                             b"san: DNS:ipc.local, IP:192.168.1.108\n"
                             b"\n" + HTTP_REPLY)
    tls = result.tls
    assert (tls["version"], tls["cipher"], tls["chain"]) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", [])
    leaf = tls["leaf"]
    der = x509.load_pem_x509_certificate(dahua_cert[0].read_bytes()).public_bytes(Encoding.DER)
    assert leaf["sha256"] == hashlib.sha256(der).hexdigest()
    assert (leaf["subject"], leaf["issuer"], leaf["sans"]) == (
        "CN=IPC-HFW1320S, O=Dahua", "CN=IPC-HFW1320S, O=Dahua", ["DNS:ipc.local", "IP:192.168.1.108"])
    assert (leaf["serial"], leaf["key_type"], leaf["key_bits"]) == ("3e8", "rsa", 2048)
    assert leaf["signature_algorithm"] == "sha256WithRSAEncryption" and leaf["self_issued"] is True
    now_us = time.time_ns() // 1000
    assert leaf["not_before"] < leaf["not_after"] < now_us           # expired, and accepted anyway
    assert leaf["parse_error"] is None
    # Exactly one request over TLS, and nothing after it.
    assert rec.connections == [http_request("127.0.0.1", port, CONTACT, 443)]
    assert rec.connections[0].count(b"GET ") == 1


def test_a_tls_service_that_answers_nothing_gives_the_tls_lines_only(dahua_cert, tmp_path):
    cert = self_signed(tmp_path / "plain", "router.example", "Example Networks")   # no SAN
    rec = Recorder()

    async def handler(reader, writer):
        rec.connections.append(await read_all(reader))
        writer.close()
        rec.done.set()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context(cert))
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await ConnectGrabber(settings(read_timeout_s=1.5)).grab("127.0.0.1", port, grabber="tls")
            await asyncio.wait_for(rec.done.wait(), 10)
        return port, result

    port, result = run(main())
    lines = result.banner.decode().split("\n")
    assert lines[0].startswith("TLS TLSv1.3 TLS_")
    assert lines[1:] == ["subject: CN=router.example, O=Example Networks",
                         "issuer: CN=router.example, O=Example Networks", ""]     # no san: line
    assert result.kind == "BANNER" and result.tls["leaf"]["sans"] == []
    assert rec.connections == [http_request("127.0.0.1", port, CONTACT, 443)]     # the one GET, unanswered


def test_an_implicit_tls_mail_port_is_read_not_asked(dahua_cert):
    rec = Recorder()
    greeting = b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n"

    async def handler(reader, writer):
        writer.write(greeting)
        await writer.drain()
        rec.connections.append(await read_all(reader))
        writer.close()
        rec.done.set()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context(dahua_cert))
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await ConnectGrabber(settings()).grab("127.0.0.1", port, grabber="imaps")
            await asyncio.wait_for(rec.done.wait(), 10)
        return result

    result = run(main())
    assert result.grab_status == "SUCCESS" and result.grabber == "imaps"
    assert result.banner.endswith(b"san: DNS:ipc.local, IP:192.168.1.108\n\n" + greeting)
    assert rec.connections == [b""]                                     # nothing sent over TLS


def test_a_plain_service_on_a_tls_port_is_a_tls_error_not_a_banner():
    rec = Recorder()

    async def handler(reader, writer):
        writer.write(b"SSH-2.0-dropbear_2014.63\r\n")
        await writer.drain()
        rec.connections.append(await read_all(reader, 3))
        writer.close()
        rec.done.set()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await ConnectGrabber(settings()).grab("127.0.0.1", port, grabber="tls")
            await asyncio.wait_for(rec.done.wait(), 10)
        return result

    result = run(main())
    assert result.status is ProbeStatus.OPEN and result.kind == "SYN_ACK" and result.banner is None
    assert (result.grab_status, result.tls) == ("TLS_ERROR", None)
    # What it got was a TLS ClientHello (record type 22, handshake), and no HTTP request.
    assert rec.connections[0][:1] == b"\x16" and b"GET " not in rec.connections[0]


def test_a_busybox_telnetd_gets_refusals_only_and_its_prompt_is_stored_as_text():
    """Negotiation first (WILL ECHO, WILL SGA, DO TTYPE, DO NAWS), banner and prompt once answered;
    everything the grabber sends is recorded, split at the moment the prompt went out."""
    negotiation = bytes([255, 251, 1, 255, 251, 3, 255, 253, 24, 255, 253, 31])
    text = b"\r\nBusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)\r\n\r\n(none) login: "
    before, after = [], []
    done = asyncio.Event()

    async def telnetd(reader, writer):
        writer.write(negotiation)
        await writer.drain()
        answers = b""
        try:
            while len(answers) < 12:
                chunk = await asyncio.wait_for(reader.read(64), 3)
                if not chunk:
                    break
                answers += chunk
        except asyncio.TimeoutError:
            pass
        before.append(answers)
        writer.write(text)
        await writer.drain()
        after.append(await read_all(reader))          # after the prompt, until the grabber closes
        writer.close()
        done.set()

    async def main():
        server = await asyncio.start_server(telnetd, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await ConnectGrabber(settings()).grab("127.0.0.1", port, grabber="telnet")
            await asyncio.wait_for(done.wait(), 10)
        return result

    result = run(main())
    # DONT ECHO, DONT SGA (answers to WILL), WONT TTYPE, WONT NAWS (answers to DO): nothing else.
    assert before == [bytes([255, 254, 1, 255, 254, 3, 255, 252, 24, 255, 252, 31])]
    assert after == [b""]                                           # nothing after the login prompt
    assert result.kind == "BANNER" and result.banner == text and b"\xff" not in result.banner
    assert (result.grabber, result.grab_status, result.protocol) == ("telnet", "SUCCESS", "telnet")


def test_the_cap_cuts_a_long_answer_over_tls(dahua_cert):
    body = b"x" * 10_000
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + body

    async def handler(reader, writer):
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        await read_all(reader, 3)
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context(dahua_cert))
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await ConnectGrabber(settings(banner_cap=1024)).grab("127.0.0.1", port, grabber="tls")

    result = run(main())
    assert len(result.banner) == 1024 and result.banner_truncated
    assert result.banner.startswith(b"TLS ") and b"\n\nHTTP/1.1 200 OK\r\n" in result.banner



def test_a_reset_before_any_word_is_an_io_error_and_a_refused_port_says_so():
    async def handler(reader, writer):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close = RST
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reset = await ConnectGrabber(settings()).grab("127.0.0.1", port, grabber="ssh")
        refused = await ConnectGrabber(settings()).grab("127.0.0.1", port, grabber="ssh")   # server gone
        return reset, refused

    reset, refused = run(main())
    assert reset.status is ProbeStatus.OPEN and reset.kind == "SYN_ACK"
    assert (reset.grabber, reset.grab_status) == ("ssh", "IO_ERROR")
    assert refused.status is ProbeStatus.CLOSED and refused.grab_status == "CONNECTION_REFUSED"


def test_an_unexpected_greeting_is_kept_as_a_protocol_error_and_a_mute_web_server_is_a_timeout():
    got: list[bytes] = []

    async def ftp(reader, writer):
        writer.write(b"220 ProFTPD Server ready.\r\n")
        await writer.drain()
        got.append(await read_all(reader, 3))
        writer.close()

    async def mute(reader, writer):
        got.append(await read_all(reader, 3))      # reads the GET, never answers
        writer.close()

    async def main():
        s1 = await asyncio.start_server(ftp, "127.0.0.1", 0)
        s2 = await asyncio.start_server(mute, "127.0.0.1", 0)
        p1, p2 = s1.sockets[0].getsockname()[1], s2.sockets[0].getsockname()[1]
        async with s1, s2:
            grabber = ConnectGrabber(settings(read_timeout_s=1.0))
            odd = await grabber.grab("127.0.0.1", p1, grabber="ssh")
            silent = await grabber.grab("127.0.0.1", p2, grabber="http")
            await asyncio.sleep(0.1)
        return p2, odd, silent

    p2, odd, silent = run(main())
    assert (odd.kind, odd.grab_status, odd.banner, odd.protocol) == (
        "BANNER", "PROTOCOL_ERROR", b"220 ProFTPD Server ready.\r\n", "ftp")
    assert (silent.kind, silent.grab_status, silent.banner) == ("SYN_ACK", "TIMEOUT", None)
    assert sorted(got) == sorted([b"", http_request("127.0.0.1", p2, CONTACT)])


def test_a_telnetd_that_shows_its_prompt_with_its_negotiation_gets_nothing_at_all():
    """Negotiation and login prompt in one write (BusyBox telnetd does not wait): the prompt is
    already there, so not even the refusals are sent; the banner is the text."""
    greeting = bytes([255, 253, 24, 255, 253, 32, 255, 251, 1]) + b"\r\nDVR login: "
    got: list[bytes] = []
    done = asyncio.Event()

    async def telnetd(reader, writer):
        writer.write(greeting)
        await writer.drain()
        got.append(await read_all(reader))
        writer.close()
        done.set()

    async def main():
        server = await asyncio.start_server(telnetd, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await ConnectGrabber(settings()).grab("127.0.0.1", port, grabber="telnet")
            await asyncio.wait_for(done.wait(), 10)
        return result

    result = run(main())
    assert got == [b""]
    assert (result.banner, result.protocol, result.grab_status) == (b"\r\nDVR login: ", "telnet", "SUCCESS")
