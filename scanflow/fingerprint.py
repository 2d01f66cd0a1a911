"""Stable fingerprints of what a host answered, blind to the parts of banners that change every scan.

The efficient policy backs off while "the answer stays the same" and resets when it changes. Taken
literally, every web server would change on every scan: its ``Date`` header ticks, session cookies,
digest nonces and request ids are fresh on every connection. So a banner is first *normalised*: the
volatile parts (dates and times, session ids and cookies, nonces, request ids, long counters, long
random-looking tokens, uptimes) are replaced by a placeholder, and only then hashed.

Everything here works on bytes, never decodes, truncates its input to :data:`MAX_BANNER_BYTES` before
any regular expression runs, and uses only linear-time patterns, so an untrusted banner cannot make it
slow or make it raise. Digests come from :mod:`hashlib` (BLAKE2b), never from Python's ``hash()``,
which is salted per process: a fingerprint computed by a Beam worker, the simulator and a replay for
the same banner must be the same string.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

#: Banners are cut to this many bytes before normalisation (the agents keep at most 4096).
MAX_BANNER_BYTES = 4096

_MONTH = rb"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_WDAY = rb"(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?"
_ZONE = rb"(?:[ \t]*(?:gmt|utc|z|[+-]\d{2}:?\d{2}|[a-z]{3,4}t))?"
_TIME = rb"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"

# Header lines whose whole value is per-response (RFC 9110 fields and common proxy/CDN additions).
_VOLATILE_HEADERS = re.compile(
    rb"(?im)^([ \t]*(?:date|expires|last-modified|set-cookie|etag|age|content-length|retry-after"
    rb"|x-request-id|x-correlation-id|x-trace-id|traceparent|request-id|x-runtime|x-response-time"
    rb"|x-timer|x-served-by|x-cache(?:-hits)?|x-varnish|cf-ray|x-amz-[a-z0-9-]+|x-powered-by-plesk"
    rb"|x-csrf-token|x-xsrf-token|x-session-id|www-authenticate|proxy-authenticate))[ \t]*:[^\r\n]*")

# key=value / key: value pairs whose value is a secret of the moment.
_VOLATILE_VALUES = re.compile(
    rb"(?i)\b(nonce|cnonce|opaque|challenge|salt|token|csrf[a-z_-]*|xsrf[a-z_-]*|session[a-z_-]*"
    rb"|sess[a-z_-]*id|sid|jsessionid|phpsessid|aspsessionid[a-z]*|sessid|auth[a-z_-]*key|ticket)"
    rb"([ \t]*[=:][ \t]*)\"?[^\s\";,&]*\"?")

_DATES = re.compile(
    rb"(?i)"
    # Sun, 06 Nov 1994 08:49:37 GMT / Sunday, 06-Nov-94 08:49:37 GMT
    rb"(?:" + _WDAY + rb",?[ \t]+\d{1,2}[ \t-]" + _MONTH + rb"[ \t-]\d{2,4}(?:[ \t]+" + _TIME + _ZONE + rb")?)"
    # Sun Nov  6 08:49:37 1994 (asctime) and syslog-style Nov  6 08:49:37
    rb"|(?:(?:" + _WDAY + rb"[ \t]+)?" + _MONTH + rb"[ \t]+\d{1,2}[ \t]+" + _TIME + rb"(?:[ \t]+\d{4})?" + _ZONE + rb")"
    # 06 Nov 1994 / Nov 6, 1994
    rb"|(?:\d{1,2}[ \t-]" + _MONTH + rb"[ \t-]\d{4})|(?:" + _MONTH + rb"[ \t]+\d{1,2},?[ \t]+\d{4})"
    # 1994-11-06T08:49:37.123Z, 1994/11/06 08:49
    rb"|(?:\d{4}[-/]\d{1,2}[-/]\d{1,2}(?:[t \t]+" + _TIME + _ZONE + rb")?)"
    # 06/11/1994 (only with / or -: 1.2.24 is a version, not a date)
    rb"|(?:\d{1,2}[-/]\d{1,2}[-/]\d{2,4})"
    # a bare clock time
    rb"|(?:\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?" + _ZONE + rb")")

# Every alternative of _DATES holds a month name or a digit, separator, digit (1994-11, 6/11, 08:49):
# lines without either (most lines) skip the costly date pattern, with the same result.
_DATE_HINT = re.compile(rb"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|\d[-/:]\d")

_UUID = re.compile(rb"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_HEX_RUN = re.compile(rb"(?i)\b[0-9a-f]{16,}\b")
_LONG_NUMBER = re.compile(rb"\b\d{7,}\b")  # epoch seconds/millis, sequence numbers, byte counters
_TOKEN = re.compile(rb"[A-Za-z0-9+/_-]{24,}={0,2}")

# Counters introduced by a word: "user number 3", "uptime: 12345", "pid=812", "up 3 days".
_COUNTERS = re.compile(
    rb"(?i)\b(uptime|up|pid|process(?:es)?|connections?|clients?|users?|requests?|sessions?|seq"
    rb"|count(?:er)?|load(?: average)?|queue|transaction|txn|hits|visitors?)"
    rb"([ \t]*(?:number|no\.?|#|=|:|is)?[ \t]*)(?:0x[0-9a-f]+|\d[\d.,]*)")
_DURATIONS = re.compile(rb"(?i)\b\d+[ \t]*(days?|hours?|hrs?|minutes?|mins?|seconds?|secs?)\b")
_BLANKS = re.compile(rb"[ \t]+")


def _token_if_random(match: re.Match[bytes]) -> bytes:
    token = match.group(0)
    # Long runs that mix letters and digits look like session ids or nonces; long pure words
    # (header names, paths without digits) are kept because they identify software.
    if any(48 <= c <= 57 for c in token) and any(65 <= (c & 0xDF) <= 90 for c in token):
        return b"*"
    return token


# Telnet (RFC 854): IAC starts a command; WILL/WONT/DO/DONT take one option byte, SB runs to IAC SE.
_IAC, _SB, _SE = 0xFF, 0xFA, 0xF0
_OPTION_VERBS = frozenset({0xFB, 0xFC, 0xFD, 0xFE})   # WILL, WONT, DO, DONT


def is_telnet(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` starts with a complete Telnet option command (``IAC WILL|WONT|DO|DONT
    option`` or ``IAC SB``), as a telnetd's greeting does."""
    head = bytes(data[:3])
    return len(head) == 3 and head[0] == _IAC and (head[1] in _OPTION_VERBS or head[1] == _SB)


def strip_telnet(banner: bytes | bytearray | memoryview | str) -> bytes:
    """A Telnet greeting without its option negotiation: every ``IAC`` command removed (``IAC IAC``
    is a literal 0xFF), so what is left is the text a person would see, e.g. a BusyBox banner and
    its ``login:`` prompt. Anything that does not start like Telnet (:func:`is_telnet`) is returned
    unchanged: other protocols may carry 0xFF bytes. Linear time; never raises; truncated commands
    at the end are dropped."""
    data = _as_bytes(banner)
    if not is_telnet(data):
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        j = data.find(b"\xff", i)
        if j < 0:
            out += data[i:]
            break
        out += data[i:j]
        verb = data[j + 1] if j + 1 < n else None
        if verb == _IAC:                                # escaped 0xFF data byte
            out.append(_IAC)
            i = j + 2
        elif verb in _OPTION_VERBS:
            i = j + 3
        elif verb == _SB:                               # subnegotiation: up to IAC SE (or the end)
            end = data.find(b"\xff\xf0", j + 2)
            i = n if end < 0 else end + 2
        else:                                           # a two-byte command (NOP, GA, ...) or cut off
            i = j + 2
    return bytes(out)


def normalize_banner(banner: bytes | bytearray | memoryview | str) -> bytes:
    """The banner with its volatile parts replaced by ``*`` or ``#``, line endings and runs of
    blanks unified; the input is cut to :data:`MAX_BANNER_BYTES` first. Never raises on any bytes.
    A Telnet greeting's option negotiation is removed first (:func:`strip_telnet`): how it
    interleaves with the text depends on timing, not on the device.

    No pattern can match across a line end and no replacement makes one, so each line is normalised
    on its own, and lines are memoised (``Server: ...`` recurs on every probe of a device; only the
    ``Date:`` line is new): the same bytes as normalising the whole banner at once, several times
    faster on real banner mixes."""
    data = strip_telnet(_as_bytes(banner)[:MAX_BANNER_BYTES])
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    cache = _line_cache
    out = []
    for line in data.split(b"\n"):
        done = cache.get(line)
        if done is None:
            # a volatile header's value goes first; "Date: *" is then a line seen before (the header
            # step is idempotent, so the rest of the line's normalisation is the memoised one)
            headed = _VOLATILE_HEADERS.sub(rb"\1: *", line)
            done = cache.get(headed) if headed != line else None
            if len(cache) >= _LINE_CACHE_MAX:
                cache.clear()
            if done is None:
                done = _normalize_line(headed)
                cache[headed] = done
            cache[line] = done
        out.append(done)
    return b"\n".join(out).strip()


def _normalize_line(data: bytes) -> bytes:
    """Every volatile-part pattern, in order, on one line (no line ends in ``data``)."""
    data = _VOLATILE_HEADERS.sub(rb"\1: *", data)
    data = _VOLATILE_VALUES.sub(rb"\1\2*", data)
    if _DATE_HINT.search(data.lower()):
        data = _DATES.sub(b"<date>", data)
    data = _UUID.sub(b"*", data)
    data = _HEX_RUN.sub(b"*", data)
    data = _LONG_NUMBER.sub(b"#", data)
    data = _TOKEN.sub(_token_if_random, data)
    data = _DURATIONS.sub(rb"# \1", data)
    data = _COUNTERS.sub(rb"\1\2#", data)
    return _BLANKS.sub(b" ", data)


_line_cache: dict[bytes, bytes] = {}
_LINE_CACHE_MAX = 1 << 18


_digest_cache: dict[bytes, str] = {}
_DIGEST_CACHE_MAX = 1 << 18


def banner_digest(banner: bytes | bytearray | memoryview | str) -> str:
    """16 hex digits identifying a banner up to its volatile parts (BLAKE2b of the normalised bytes).

    The same few thousand banners recur across millions of hosts in a simulation, so results are
    memoised in a bounded table (cleared when full; the function stays pure).
    """
    data = _as_bytes(banner)[:MAX_BANNER_BYTES]
    digest = _digest_cache.get(data)
    if digest is None:
        digest = hashlib.blake2b(normalize_banner(data), digest_size=8).hexdigest()
        if len(_digest_cache) >= _DIGEST_CACHE_MAX:
            _digest_cache.clear()
        _digest_cache[data] = digest
    return digest


def port_digests(banners: Mapping[int, bytes] | Iterable[tuple[int, bytes]]) -> tuple[tuple[int, str], ...]:
    """``((port, banner_digest), ...)`` ascending by port, for the ports that sent a banner."""
    items = banners.items() if isinstance(banners, Mapping) else banners
    return tuple(sorted((int(port), banner_digest(data)) for port, data in items if data is not None))


def fingerprint(open_ports: Iterable[int], digests: Iterable[tuple[int, str]] = ()) -> str:
    """32 hex digits identifying an answer: the set of open ports and each port's banner digest.

    Two answers have the same fingerprint exactly when they have the same open ports and the same
    normalised banners on the same ports. ``digests`` are pairs from :func:`port_digests`.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(b"p:" + ",".join(str(p) for p in sorted(set(open_ports))).encode())
    for port, digest in sorted(digests):
        h.update(f";{port}={digest}".encode())
    return h.hexdigest()


def answer_fingerprint(open_ports: Iterable[int],
                       banners: Mapping[int, bytes] | Iterable[tuple[int, bytes]] = ()) -> str:
    """:func:`fingerprint` straight from raw banners (``{port: bytes}`` or pairs)."""
    return fingerprint(open_ports, port_digests(banners))


def _as_bytes(banner: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(banner, bytes):
        return banner
    if isinstance(banner, str):
        # A str banner can hold lone surrogates; "replace" turns them into '?' instead of raising.
        return banner.encode("utf-8", "replace")
    return bytes(banner)
