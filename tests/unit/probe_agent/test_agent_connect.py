"""The connect grabber against real sockets on 127.0.0.1 (in-process servers on ephemeral ports)."""

from __future__ import annotations

import asyncio
import socket

from probe_agent.backends import ProbeStatus
from probe_agent.backends.connect import ConnectGrabber
from probe_agent.settings import AgentSettings

CONTACT = "scanflow-unit-test (purpose: https://lab.example/scan)"


def settings(**changes):
    opts = dict(backend="connect", allowlist=("127.0.0.1/32",), contact=CONTACT, connect_timeout_s=2.0,
                read_timeout_s=2.0, passive_wait_s=0.3, idle_gap_s=0.1)
    opts.update(changes)
    return AgentSettings(**opts).validate()


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # bound, never listened: connecting gets a RST
    return port


def test_greeting_is_read_without_sending_anything():
    received = []

    async def main():
        finished = asyncio.Event()

        async def greet(reader, writer):
            writer.write(b"220 (vsFTPd 3.0.3)\r\n")
            await writer.drain()
            received.append(await reader.read(100))   # everything the grabber sends, until it closes
            writer.close()
            finished.set()

        server, port = await serve(greet)
        async with server:
            # Port numbers are ephemeral, so use the listen-only approach explicitly.
            result = await ConnectGrabber(settings(ask_unknown=False)).grab("127.0.0.1", port)
            await asyncio.wait_for(finished.wait(), 5)
        return result

    result = asyncio.run(main())
    assert result.status is ProbeStatus.OPEN and result.kind == "BANNER"
    assert result.banner == b"220 (vsFTPd 3.0.3)\r\n" and result.protocol == "ftp"
    assert received == [b""]                           # the grabber said nothing, then closed
    assert result.packets >= 3 and result.bytes >= 60 + 52 * 2


def test_silent_unknown_port_gets_one_http_get_with_the_contact():
    requests = []

    async def main():
        async def http(reader, writer):
            data = await reader.readuntil(b"\r\n\r\n")
            requests.append(data)
            writer.write(b"HTTP/1.0 200 OK\r\nServer: test\r\n\r\nhello")
            await writer.drain()
            writer.close()

        server, port = await serve(http)
        async with server:
            return await ConnectGrabber(settings()).grab("127.0.0.1", port)

    result = asyncio.run(main())
    assert len(requests) == 1 and requests[0].startswith(b"GET / HTTP/1.1\r\n")
    assert f"User-Agent: {CONTACT}".encode() in requests[0]
    assert result.kind == "BANNER" and result.protocol == "http"
    assert result.banner == b"HTTP/1.0 200 OK\r\nServer: test\r\n\r\nhello"


def test_long_banners_are_cut_at_the_cap_and_flagged():
    async def main():
        async def chatty(reader, writer):
            writer.write(b"x" * 10_000)
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.close()

        server, port = await serve(chatty)
        async with server:
            return await ConnectGrabber(settings(banner_cap=100)).grab("127.0.0.1", port)

    result = asyncio.run(main())
    assert result.banner == b"x" * 100 and result.banner_truncated


def test_open_but_silent_port_is_a_syn_ack_event():
    async def main():
        async def silent(reader, writer):
            await asyncio.sleep(3)
            writer.close()

        server, port = await serve(silent)
        async with server:
            return await ConnectGrabber(settings(ask_unknown=False)).grab("127.0.0.1", port)

    result = asyncio.run(main())
    assert result.status is ProbeStatus.OPEN and result.kind == "SYN_ACK" and result.banner is None


def test_closed_port_is_not_an_event_and_costs_one_syn():
    result = asyncio.run(ConnectGrabber(settings()).grab("127.0.0.1", closed_port()))
    assert result.status is ProbeStatus.CLOSED and result.kind is None
    assert (result.packets, result.bytes) == (1, 60)


def test_an_unknown_interface_is_a_clear_error_at_start():
    import pytest

    from probe_agent.backends import BackendError
    from probe_agent.backends.connect import ConnectBackend

    backend = ConnectBackend(settings(interface="nosuchif0"))
    with pytest.raises(BackendError, match="nosuchif0"):
        asyncio.run(backend.open())


def test_a_telnetd_that_waits_for_answers_gets_refusals_only_and_its_banner_is_read():
    """Like BusyBox's telnetd: four options asked (DO ECHO... WILL ...), the banner and login prompt
    only once they are answered. The grabber refuses each, once, and reads what follows; it never
    sends a terminal type, a window size or anything typed."""
    negotiation = bytes([255, 253, 1, 255, 253, 3, 255, 251, 24, 255, 251, 31])   # DO 1, DO 3, WILL 24, WILL 31
    banner = b"\r\nBusyBox v1.19.4 (2013-02-18) built-in shell\r\ndvr login: "
    received = []

    async def main():
        finished = asyncio.Event()

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
            received.append(answers)
            if len(answers) >= 12:
                writer.write(banner)
                await writer.drain()
            received.append(await reader.read(100))   # anything more, until the grabber closes
            writer.close()
            finished.set()

        server, port = await serve(telnetd)
        async with server:
            result = await ConnectGrabber(settings(ask_unknown=False)).grab("127.0.0.1", port)
            await asyncio.wait_for(finished.wait(), 5)
        return result

    result = asyncio.run(main())
    # WONT ECHO, WONT SGA (answers to DO), DONT TTYPE, DONT NAWS (answers to WILL); then nothing.
    assert received[0] == bytes([255, 252, 1, 255, 252, 3, 255, 254, 24, 255, 254, 31])
    assert received[1] == b""
    assert result.status is ProbeStatus.OPEN and result.kind == "BANNER"
    # Stored: the text after negotiation (the banner and prompt), not the negotiation bytes.
    assert result.banner == banner and result.protocol == "telnet"
    assert (result.grab_status, result.grabber) == ("SUCCESS", "greeting")
