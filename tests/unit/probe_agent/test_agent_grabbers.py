"""The grabber registry, the port table, certificate facts and their rendering, the one-request rule."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from probe_agent import grabbers
from probe_agent.banners import TLS_PORTS, Ask, ask_for
from probe_agent.grabbers import OneRequestRule, Status
from probe_agent.grabbers.certs import cert_facts, render_tls_block, tls_record
from probe_agent.grabbers.conn import Conn

T0 = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)


def make_cert(attrs, sans=(), key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(0xABCDEF).not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_every_registered_grabber_loads_and_names_itself():
    for name in grabbers.grabber_names():
        assert grabbers.get(name).name == name
    with pytest.raises(KeyError, match="known: "):
        grabbers.get("gopher")


def test_ports_get_their_grabbers_and_the_old_behaviour_stays():
    assert grabbers.name_for_port(80) == "http" and grabbers.name_for_port(8080) == "http"
    assert grabbers.name_for_port(554) == "rtsp"
    for port in (443, 8443, 4443):
        assert grabbers.name_for_port(port) == "tls"
    assert [grabbers.name_for_port(p) for p in (465, 993, 995)] == ["smtps", "imaps", "pop3s"]
    assert grabbers.name_for_port(23) == "telnet" and grabbers.name_for_port(2323) == "telnet"
    assert [grabbers.name_for_port(p) for p in (21, 22, 25, 110, 143)] == ["ftp", "ssh", "smtp", "pop3", "imap"]
    assert grabbers.name_for_port(31337) == "unknown"
    assert grabbers.name_for_port(31337, ask_unknown=False) == "greeting"
    # The simulated backend's view of the same table.
    assert ask_for(80) is Ask.HTTP and ask_for(8443) is Ask.LISTEN and 8443 in TLS_PORTS


def test_names_are_written_cn_o_ou_then_the_others_and_sans_by_type():
    der = make_cert([(NameOID.COUNTRY_NAME, "CN"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "IPC"),
                     (NameOID.ORGANIZATION_NAME, "Dahua, Inc."), (NameOID.COMMON_NAME, "IPC-HFW1320S")],
                    sans=[x509.DNSName("ipc.local"), x509.IPAddress(ipaddress.ip_address("192.168.1.108"))])
    facts = cert_facts(der)
    assert facts["subject"] == r"CN=IPC-HFW1320S, O=Dahua\, Inc., OU=IPC, C=CN"
    assert facts["sans"] == ["DNS:ipc.local", "IP:192.168.1.108"]
    assert (facts["key_type"], facts["key_bits"], facts["serial"]) == ("ec-secp256r1", 256, "abcdef")
    assert facts["signature_algorithm"] == "ecdsa-with-SHA256"
    assert facts["not_before"] == int(T0.timestamp()) * 1_000_000
    block = render_tls_block(tls_record("TLSv1.3", "TLS_AES_128_GCM_SHA256", der, []))
    assert block == ("TLS TLSv1.3 TLS_AES_128_GCM_SHA256\n"
                     r"subject: CN=IPC-HFW1320S, O=Dahua\, Inc., OU=IPC, C=CN" "\n"
                     r"issuer: CN=IPC-HFW1320S, O=Dahua\, Inc., OU=IPC, C=CN" "\n"
                     "san: DNS:ipc.local, IP:192.168.1.108\n")


def test_no_san_line_without_names_and_garbage_keeps_its_fingerprint():
    der = make_cert([(NameOID.COMMON_NAME, "router")])
    assert render_tls_block(tls_record("TLSv1.2", "AES128-SHA", der, [])) == (
        "TLS TLSv1.2 AES128-SHA\nsubject: CN=router\nissuer: CN=router\n")
    facts = cert_facts(b"\x30\x03\x02\x01\x00")
    assert facts["parse_error"] and len(facts["sha256"]) == 64 and facts["subject"] == ""
    assert render_tls_block(tls_record("TLSv1.2", "AES128-SHA", None, [])) == "TLS TLSv1.2 AES128-SHA\n"


def test_a_second_request_on_one_connection_is_refused():
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            conn = Conn(a, "127.0.0.1", 80, contact="c", cap=64, read_timeout_s=1, passive_wait_s=0.1,
                        idle_gap_s=0.1)
            assert await conn.request(b"GET / HTTP/1.0\r\n\r\n")
            with pytest.raises(OneRequestRule):
                await conn.request(b"GET /again HTTP/1.0\r\n\r\n")
            b.setblocking(False)
            return b.recv(100)
        finally:
            a.close()
            b.close()

    assert asyncio.run(main()) == b"GET / HTTP/1.0\r\n\r\n"


def test_only_telnet_refusals_leave_through_negotiation():
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            conn = Conn(a, "127.0.0.1", 23, contact="c", cap=64, read_timeout_s=1, passive_wait_s=0.1,
                        idle_gap_s=0.1)
            with pytest.raises(ValueError):
                await conn._refuse(b"\xff\xfa\x18root")                  # a subnegotiation: never
            await conn._refuse(bytes([255, 252, 24]))
            return conn.negotiation_bytes
        finally:
            a.close()
            b.close()

    assert asyncio.run(main()) == 3


def test_the_status_set_is_the_contracts():
    from connectors.schema_registry import default_registry

    status = next(f for f in default_registry().latest("ScanEvent").schema["fields"] if f["name"] == "status")
    assert [s.value for s in Status] == status["type"]["symbols"][1:]


def test_a_connect_grabber_loads_every_grabber_before_the_first_probe():
    """Importing a grabber mid-scan (cryptography: ~0.1 s of CPU) would stall the event loop and let
    other probes' connect timeouts expire: the backend loads them all when it is made."""
    from probe_agent.backends.connect import ConnectGrabber
    from probe_agent.settings import AgentSettings

    grabbers._INSTANCES.clear()
    ConnectGrabber(AgentSettings(backend="connect", allowlist=("127.0.0.1/32",)).validate())
    assert set(grabbers._INSTANCES) == set(grabbers.GRABBERS)


def test_prompts_are_recognised_after_the_telnet_commands_are_removed():
    from probe_agent.grabbers.conn import prompt_shown

    assert prompt_shown(bytes([255, 251, 1]) + b"\r\nBusyBox v1.19.4\r\n\r\n(none) login: ")
    assert prompt_shown(b"Password:") and prompt_shown(b"root@dvr:~# ") and prompt_shown(b"Username: ")
    assert not prompt_shown(bytes([255, 253, 24, 255, 253, 31]))            # negotiation only
    assert not prompt_shown(b"\r\nBusyBox v1.19.4 built-in shell (ash)\r\n")


def test_nothing_is_sent_once_a_prompt_was_seen():
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            conn = Conn(a, "127.0.0.1", 23, contact="c", cap=256, read_timeout_s=1, passive_wait_s=0.2,
                        idle_gap_s=0.05)
            b.send(bytes([255, 253, 24]) + b"\r\n(none) login: " + bytes([255, 253, 31]))
            raw = await conn.read_banner(0.2, telnet=True)
            sent_request = await conn.request(b"GET / HTTP/1.0\r\n\r\n")
            await asyncio.sleep(0.05)
            try:
                received = b.recv(100)
            except BlockingIOError:
                received = b""
            return raw, conn.prompted, sent_request, received
        finally:
            a.close()
            b.close()

    raw, prompted, sent_request, received = asyncio.run(main())
    assert raw.endswith(b"login: " + bytes([255, 253, 31])) and prompted
    assert sent_request is False and received == b""
