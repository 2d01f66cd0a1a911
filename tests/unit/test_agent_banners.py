"""Banner grabber protocol knowledge: what is sent where, and that nothing else ever is."""

from __future__ import annotations

import re

import pytest

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
