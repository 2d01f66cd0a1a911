"""Banner grabber protocol knowledge: what is sent where, and that nothing else ever is."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe_agent.banners import (
    GREETING_PORTS,
    HTTP_PORTS,
    RTSP_PORTS,
    TLS_PORTS,
    Ask,
    ask_for,
    http_request,
    identify,
    request_for,
    rtsp_request,
)

CONTACT = "scanflow-test (purpose: https://lab.example/scan)"


def test_greeting_ports_only_listen():
    for port in (21, 22, 23, 25, 110, 143):
        assert ask_for(port) is Ask.LISTEN
        assert request_for(ask_for(port), "198.18.0.1", port, CONTACT) is None


def test_http_and_rtsp_ports_ask_once():
    assert ask_for(80) is Ask.HTTP and ask_for(8080) is Ask.HTTP
    assert ask_for(554) is Ask.RTSP
    assert ask_for(31337) is Ask.LISTEN_THEN_HTTP
    assert ask_for(31337, ask_unknown=False) is Ask.LISTEN


def test_http_request_names_the_operator_and_closes():
    req = http_request("198.18.0.1", 8080, CONTACT).decode()
    assert req.startswith("GET / HTTP/1.1\r\n") and req.endswith("\r\n\r\n")
    assert "Host: 198.18.0.1:8080\r\n" in req and f"User-Agent: {CONTACT}\r\n" in req
    assert "Connection: close" in req
    assert "Host: [2001:db8::1]\r\n" in http_request("2001:db8::1", 80, CONTACT).decode()


def test_rtsp_request_is_options():
    req = rtsp_request("198.18.0.1", 554, CONTACT).decode()
    assert req.startswith("OPTIONS rtsp://198.18.0.1:554/ RTSP/1.0\r\nCSeq: 1\r\n")
    assert f"User-Agent: {CONTACT}" in req


ALL_PORTS = sorted(HTTP_PORTS | RTSP_PORTS | GREETING_PORTS | TLS_PORTS | {1, 7, 31337, 65535})
CREDENTIAL_WORDS = re.compile(rb"authorization|cookie|user |pass |login|password|auth|\x00", re.I)


@pytest.mark.parametrize("port", ALL_PORTS)
def test_no_request_ever_carries_credentials(port):
    for ask in Ask:
        request = request_for(ask, "198.18.0.1", port, CONTACT)
        if request is None:
            continue
        data, protocol = request
        assert protocol in ("http", "rtsp")
        assert not CREDENTIAL_WORDS.search(data.replace(CONTACT.encode(), b""))
        assert data.count(b"\r\n\r\n") == 1          # exactly one request, nothing pipelined


@pytest.mark.parametrize("banner, protocol", [
    (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", "ssh"),
    (b"220 (vsFTPd 3.0.3)\r\n", "ftp"),
    (b"220 mail.example ESMTP Postfix\r\n", "smtp"),
    (b"+OK Dovecot ready.\r\n", "pop3"),
    (b"* OK [CAPABILITY IMAP4rev1] ready\r\n", "imap"),
    (b"\xff\xfd\x18\xff\xfd \xff\xfd#", "telnet"),
    (b"HTTP/1.0 200 OK\r\n", "http"),
    (b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n", "rtsp"),
    (b"hello", None),
])
def test_identify(banner, protocol):
    assert identify(banner) == protocol


# -- Telnet: refuse every option, show the text after the negotiation ----------------------------

from probe_agent.banners import MAX_TELNET_REPLIES, TelnetRefuser, banner_line  # noqa: E402

# What the testbed's BusyBox device says on connect: WILL ECHO, WILL SGA, DO TTYPE, DO NAWS, then text.
NEGOTIATION = bytes([255, 251, 1, 255, 251, 3, 255, 253, 24, 255, 253, 31])
BUSYBOX = (NEGOTIATION + b"\r\nBusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)\r\n\r\n"
           b"(none) login: ")
REFUSALS = bytes([255, 254, 1, 255, 254, 3, 255, 252, 24, 255, 252, 31])  # DONT ECHO, DONT SGA, WONT TTYPE, WONT NAWS


def test_telnet_options_are_all_refused_like_a_client_that_wants_nothing():
    assert TelnetRefuser().feed(BUSYBOX) == REFUSALS


def test_telnet_commands_split_across_reads_are_answered_once_complete():
    refuser = TelnetRefuser()
    assert b"".join(refuser.feed(bytes([b])) for b in BUSYBOX) == REFUSALS


def test_telnet_refusals_are_sent_once_per_option_and_never_answer_refusals():
    refuser = TelnetRefuser()
    assert refuser.feed(NEGOTIATION) == REFUSALS
    assert refuser.feed(NEGOTIATION) == b""                                  # asked again: no loop
    assert refuser.feed(bytes([255, 252, 5, 255, 254, 6])) == b""           # WONT/DONT need no answer
    assert refuser.feed(bytes([255, 250, 24, 1, 255, 240])) == b""          # SB TTYPE SEND: no terminal type
    flood = TelnetRefuser()
    out = flood.feed(b"".join(bytes([255, 253, i]) for i in range(200)))
    assert len(out) == 3 * MAX_TELNET_REPLIES


@pytest.mark.parametrize("stream", [
    b"HTTP/1.1 200 OK\r\n\r\n\xff\xfd\x01\xff\xfb\x03",                   # 0xFF inside another protocol
    b"SSH-2.0-x\r\n", b"\xfe\xff\xfd\x01", b"\x16\x03\x01\xff\xfd\x18",
])
def test_only_streams_that_start_as_telnet_are_answered(stream):
    refuser = TelnetRefuser()
    assert refuser.feed(stream) == b"" and refuser.feed(NEGOTIATION) == b""


@given(st.lists(st.binary(max_size=64), max_size=20))
@settings(max_examples=300, deadline=None)
def test_telnet_replies_are_only_refusals_whatever_the_server_sends(chunks):
    refuser = TelnetRefuser()
    sent = b"".join(refuser.feed(NEGOTIATION[:3] + c if i == 0 else c) for i, c in enumerate(chunks))
    assert len(sent) % 3 == 0
    for i in range(0, len(sent), 3):
        assert sent[i] == 255 and sent[i + 1] in (252, 254)                # IAC WONT|DONT option
    assert not CREDENTIAL_WORDS.search(sent.replace(b"\x00", b""))


def test_the_banner_line_is_the_text_after_the_negotiation():
    assert banner_line(BUSYBOX) == "BusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)"
    assert banner_line(b"SSH-2.0-OpenSSH_9.6\r\n") == "SSH-2.0-OpenSSH_9.6"
    assert banner_line(b"\x1b[2J\r\nhi") == "\\x1b[2J"                      # never a raw escape sequence
    assert banner_line(None) == "" and banner_line(NEGOTIATION) == ""


def test_a_telnetd_that_waits_for_answers_shows_its_banner_to_a_refusing_client():
    """On 127.0.0.1: a server that sends its banner only once every option it asked about is
    answered (as strict telnetds do) gets refusals only, and the client sees BusyBox."""
    import asyncio

    received = bytearray()

    async def serve(reader, writer):
        writer.write(NEGOTIATION)
        await writer.drain()
        while len(received) < len(REFUSALS):
            chunk = await reader.read(100)
            if not chunk:
                return
            received.extend(chunk)
        writer.write(BUSYBOX[len(NEGOTIATION):])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    async def client(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refuser, got = TelnetRefuser(), bytearray()
        while chunk := await asyncio.wait_for(reader.read(4096), 30):
            got.extend(chunk)
            reply = refuser.feed(chunk)
            if reply:
                writer.write(reply)
                await writer.drain()
        writer.close()
        return bytes(got)

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        async with server:
            return await client(server.sockets[0].getsockname()[1])

    got = asyncio.run(main())
    assert bytes(received) == REFUSALS
    assert banner_line(got).startswith("BusyBox v1.19.4")
