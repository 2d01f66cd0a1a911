"""Fingerprints: volatile banner parts are ignored, everything else counts, digests are stable."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from scanflow.fingerprint import (MAX_BANNER_BYTES, answer_fingerprint, banner_digest, fingerprint,
                                  normalize_banner, port_digests)

HTTP_A = (b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 12:34:56 GMT\r\nServer: Hikvision-Webs\r\n"
          b"Set-Cookie: SID=4f1e2d3c4b5a; path=/\r\nETag: \"5f3a-1a2b\"\r\nContent-Length: 1234\r\n\r\n")
HTTP_B = (b"HTTP/1.1 200 OK\r\nDate: Tue, 02 Jan 2024 00:00:01 GMT\r\nServer: Hikvision-Webs\r\n"
          b"Set-Cookie: SID=99aa88bb77cc; path=/\r\nETag: \"6a00-ffee\"\r\nContent-Length: 1250\r\n\r\n")


def test_http_headers_that_change_per_response_do_not_change_the_digest():
    assert banner_digest(HTTP_A) == banner_digest(HTTP_B)


def test_a_different_server_is_a_different_digest():
    assert banner_digest(HTTP_A) != banner_digest(HTTP_A.replace(b"Hikvision-Webs", b"lighttpd/1.4.35"))


def test_a_software_version_change_is_a_change():
    a = b"SSH-2.0-OpenSSH_7.4p1 Debian-10+deb9u7"
    assert banner_digest(a) != banner_digest(a.replace(b"7.4p1", b"8.4p1"))


def test_digest_nonce_is_ignored_but_realm_change_of_server_is_not():
    a = b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="cam", nonce="a1b2c3d4"\r\nServer: Boa\r\n'
    b = a.replace(b"a1b2c3d4", b"ffff0000")
    assert banner_digest(a) == banner_digest(b)
    assert banner_digest(a) != banner_digest(a.replace(b"Server: Boa", b"Server: GoAhead"))


def test_dates_times_counters_and_ids_in_greetings_are_ignored():
    pairs = [
        (b"220 ProFTPD 1.3.5 Server ready at Tue Jan  2 03:04:05 2024. You are user number 3 of 50.",
         b"220 ProFTPD 1.3.5 Server ready at Wed Feb 14 23:59:01 2024. You are user number 17 of 50."),
        (b"220 mx.example.jp ESMTP Postfix; 2024-01-02T03:04:05+09:00 queue 5f3a9c2e7b1d4e8fa0c1",
         b"220 mx.example.jp ESMTP Postfix; 2024-03-09T11:00:00+09:00 queue 0011223344556677889a"),
        (b"uptime: 123456 s, up 3 days, pid=812, session 0x4f3a2",
         b"uptime: 999 s, up 41 days, pid=9, session 0x1"),
        (b"request 123e4567-e89b-12d3-a456-426614174000 at 1700000000123",
         b"request 00000000-0000-4000-8000-000000000000 at 1712345678901"),
        (b"csrf_token=QWxhZGRpbjpvcGVuIHNlc2FtZQ12345; x", b"csrf_token=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MDEy; x"),
    ]
    for a, b in pairs:
        assert normalize_banner(a) == normalize_banner(b), (a, normalize_banner(a), normalize_banner(b))


def test_versions_are_not_mistaken_for_dates():
    assert b"1.2.24" in normalize_banner(b"Server: thttpd/1.2.24")
    assert b"6.48.6" in normalize_banner(b"220 MikroTik FTP server (MikroTik 6.48.6) ready")


def test_fingerprint_is_order_independent_and_sensitive_to_ports_and_banners():
    assert answer_fingerprint([80, 22], {80: HTTP_A}) == answer_fingerprint([22, 80], [(80, HTTP_B)])
    assert answer_fingerprint([80, 22], {80: HTTP_A}) != answer_fingerprint([80], {80: HTTP_A})
    assert answer_fingerprint([80], {80: HTTP_A}) != answer_fingerprint([80], {80: b"Server: nginx"})
    assert fingerprint([80], port_digests({80: HTTP_A})) == answer_fingerprint([80], {80: HTTP_A})


def test_digest_is_blake2b_of_the_normalised_banner_not_python_hash():
    banner = b"SSH-2.0-OpenSSH_7.4"
    assert banner_digest(banner) == hashlib.blake2b(normalize_banner(banner), digest_size=8).hexdigest()


def test_digest_is_the_same_in_another_process_with_another_hash_seed():
    code = ("from scanflow.fingerprint import answer_fingerprint;"
            "print(answer_fingerprint([80, 554], {80: b'Server: Hikvision-Webs'}))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=seed)).stdout.strip() for seed in ("1", "2")}
    assert outs == {answer_fingerprint([80, 554], {80: b"Server: Hikvision-Webs"})}


def test_bytes_beyond_the_bound_are_not_looked_at():
    head = b"A" * MAX_BANNER_BYTES
    assert banner_digest(head + b"tail one") == banner_digest(head + b"another tail")


def test_str_and_buffer_inputs_are_accepted():
    assert banner_digest("Server: nginx") == banner_digest(b"Server: nginx")
    assert banner_digest(bytearray(b"Server: nginx")) == banner_digest(memoryview(b"Server: nginx"))
    assert isinstance(banner_digest("lone surrogate \udcff"), str)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=6000))
def test_any_bytes_normalise_to_bytes_within_bound_and_digest(data):
    out = normalize_banner(data)
    assert isinstance(out, bytes)
    assert len(out) <= 2 * MAX_BANNER_BYTES  # placeholders never more than double the kept bytes
    assert len(banner_digest(data)) == 16


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyzADGJMNOS0123456789 :-/,.=\r\n\"")),
               max_size=300))
def test_normalisation_is_idempotent(text):
    once = normalize_banner(text.encode())
    assert normalize_banner(once) == once


# -- Telnet greetings: the negotiation is not the banner --------------------------------------------

from scanflow.fingerprint import is_telnet, strip_telnet  # noqa: E402

TELNET_NEGOTIATION = bytes([255, 251, 1, 255, 251, 3, 255, 253, 24, 255, 253, 31])
BUSYBOX_TEXT = b"\r\nBusyBox v1.19.4 (2014-03-12 14:22:59 CST) built-in shell (ash)\r\n\r\n(none) login: "


def test_strip_telnet_leaves_the_text_a_person_sees():
    assert strip_telnet(TELNET_NEGOTIATION + BUSYBOX_TEXT) == BUSYBOX_TEXT
    # subnegotiation, an escaped 0xFF, a two-byte command, a command cut off at the end
    assert strip_telnet(b"\xff\xfa\x18\x01\xff\xf0BusyBox\xff\xff!\xff\xf1 login: \xff\xfd") == \
        b"BusyBox\xff! login: "
    assert strip_telnet(b"\xff\xfa\x18 never ends") == b""


@pytest.mark.parametrize("data", [b"", b"\xff", b"\xff\xfe", b"HTTP/1.1 200 OK\r\n\xff\xfd\x01",
                                  b"\x16\x03\x01\xff\xfb\x01", "str \xff\xfd\x01 text"])
def test_strip_telnet_changes_nothing_that_does_not_start_as_telnet(data):
    expected = data.encode("utf-8", "replace") if isinstance(data, str) else data
    assert not is_telnet(expected)
    assert strip_telnet(data) == expected


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_strip_telnet_never_raises_and_never_grows(data):
    out = strip_telnet(b"\xff\xfb\x01" + data)
    assert len(out) <= len(data) + 1


def test_a_telnet_banner_digest_ignores_the_negotiation():
    """How the option negotiation interleaves with the greeting depends on timing (and on the
    answers the grabber sends), not on the device: it must not look like a changed answer."""
    plain = banner_digest(BUSYBOX_TEXT)
    assert banner_digest(TELNET_NEGOTIATION + BUSYBOX_TEXT) == plain
    assert banner_digest(TELNET_NEGOTIATION[:6] + BUSYBOX_TEXT[:20] + TELNET_NEGOTIATION[6:] + BUSYBOX_TEXT[20:]) == plain
    assert banner_digest(TELNET_NEGOTIATION + BUSYBOX_TEXT.replace(b"1.19.4", b"1.20.0")) != plain


def _whole_buffer_normalize(banner: bytes) -> bytes:
    """The reference: every pattern over the whole banner at once (what the line-wise, memoised
    :func:`normalize_banner` must equal)."""
    from scanflow import fingerprint as F

    data = F.strip_telnet(F._as_bytes(banner)[:F.MAX_BANNER_BYTES])
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return F._normalize_line(data).strip()


_LINES = st.sampled_from([
    b"HTTP/1.1 200 OK", b"Date: Mon, 01 Jan 2024 12:34:56 GMT", b"Server: Boa/0.94.14rc21",
    b"Set-Cookie: SESSIONID=a8f5f167f44f4964e6c998dee827110c; path=/", b"uptime: 12345 days",
    b"WWW-Authenticate: Basic realm=\"DCS-932L\"", b"  token = abcdefghijklmnopqrstuvwx1234567890 ",
    b"Nov  6 08:49:37 1994", b"x" * 30, b"", b"\t", b"id 550e8400-e29b-41d4-a716-446655440000 pid=812",
    b"BusyBox v1.19.4 built-in shell", b"\xff\xfd\x01\xff\xfb\x03login:",
])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.one_of(_LINES, st.binary(max_size=60)), max_size=8),
       sep=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_line_wise_normalisation_equals_the_whole_banner_at_once(lines, sep):
    banner = sep.join(lines)
    assert normalize_banner(banner) == _whole_buffer_normalize(banner)
    assert normalize_banner(banner) == normalize_banner(banner)   # memoised lines give the same


def _every_pattern(line: bytes) -> bytes:
    """The reference for one line: every pattern in order, the date pattern always run."""
    from scanflow import fingerprint as F

    line = F._VOLATILE_HEADERS.sub(rb"\1: *", line)
    line = F._VOLATILE_VALUES.sub(rb"\1\2*", line)
    line = F._DATES.sub(b"<date>", line)
    line = F._UUID.sub(b"*", line)
    line = F._HEX_RUN.sub(b"*", line)
    line = F._LONG_NUMBER.sub(b"#", line)
    line = F._TOKEN.sub(F._token_if_random, line)
    line = F._DURATIONS.sub(rb"# \1", line)
    line = F._COUNTERS.sub(rb"\1\2#", line)
    return F._BLANKS.sub(b" ", line)


_DATE_PIECES = st.sampled_from([b"Mon", b"TUE", b"sep", b"Sept.", b"DEC", b"nov", b"06", b"6", b"1994", b"94",
                                b"08:49", b"08:49:37", b"08:49:37.123", b"GMT", b"+0900", b"z", b"T", b",",
                                b" ", b"\t", b"-", b"/", b":", b".", b"x", b"Date:", b"Server: Boa/0.9"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_DATE_PIECES, max_size=12).map(b"".join) | st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")))
def test_the_date_hint_never_skips_a_date(line):
    from scanflow import fingerprint as F

    assert F._normalize_line(line) == _every_pattern(line)
