"""Cut one banner into the fields device rules look at: HTTP ``Server``, authentication realm and page
title, TLS certificate subject/issuer/SAN, RTSP ``Server``, SIP agent, SSH version line, FTP/SMTP
greetings and Telnet text (:data:`scanflow.knowledge.RULE_FIELDS`).

The TLS grabber writes a TLS port's banner as text::

    TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256
    subject: CN=IPC-HFW1320S, O=Dahua
    issuer: CN=IPC-HFW1320S, O=Dahua
    san: DNS:ipc.local, IP:192.168.1.108

    HTTP/1.1 200 OK
    ...

so the certificate lines become ``tls.*`` fields and what follows the blank line is cut again (the
HTTP answer read through TLS). Banners are untrusted bytes: they are cut to ``limit`` bytes first,
decoded as Latin-1 (never fails), and only linear-time patterns run over them. Values are cut to
:data:`MAX_VALUE` characters.
"""

from __future__ import annotations

import re

from scanflow.fingerprint import strip_telnet

MAX_VALUE = 256

_HEADER = re.compile(r"(?im)^(server|www-authenticate|user-agent)[ \t]*:[ \t]*([^\r\n]{0,256})")
_REALM = re.compile(r'(?i)realm[ \t]*=[ \t]*"([^"\r\n]{0,128})"|realm[ \t]*=[ \t]*([^\s,]{1,128})')
#: Bytes of ordinary text (printable ASCII and the usual whitespace); a banner of which more than a
#: tenth is anything else is binary (a raw protocol), not text a rule could read.
_TEXT_BYTES = bytes(range(32, 127)) + b"\r\n\t"
_TITLE = re.compile(r"(?is)<title[^>]{0,64}>\s*([^<]{0,200}?)\s*</title")


def banner_fields(data: bytes | bytearray | memoryview | str, limit: int = 4096) -> list[tuple[str, str]]:
    """``(field, value)`` pairs found in one banner, in the order found; never raises."""
    if isinstance(data, str):
        raw = data.encode("utf-8", "replace")[:limit]
    else:
        raw = bytes(data[:limit])
    if raw[:1] == b"\xff":
        raw = strip_telnet(raw)
    head = raw[:256]
    if len(head.translate(None, _TEXT_BYTES)) * 10 > len(head):
        return []
    text = raw.decode("latin-1")
    out: list[tuple[str, str]] = []
    _cut(text.lstrip("\r\n"), out, depth=0)
    return out


def _cut(text: str, out: list[tuple[str, str]], depth: int) -> None:
    head = text[:8]
    if head.startswith("TLS") and depth == 0:
        cert, _, rest = text.partition("\n\n") if "\r\n\r\n" not in text[:2048] else text.partition("\r\n\r\n")
        for line in cert.splitlines()[1:]:
            key, sep, value = line.partition(":")
            key = key.strip().lower()
            if sep and key in ("subject", "issuer", "san"):
                out.append((f"tls.{key}", value.strip()[:MAX_VALUE]))
        if rest.strip():
            _cut(rest.lstrip("\r\n"), out, depth + 1)
        return
    if head.startswith("HTTP/"):
        header, _, body = text.partition("\r\n\r\n") if "\r\n\r\n" in text else text.partition("\n\n")
        for name, value in _HEADER.findall(header):
            name = name.lower()
            if name == "server":
                out.append(("http.server", value.strip()[:MAX_VALUE]))
            elif name == "www-authenticate":
                m = _REALM.search(value)
                if m:
                    out.append(("http.realm", (m.group(1) or m.group(2) or "").strip()[:MAX_VALUE]))
        m = _TITLE.search(body) or _TITLE.search(header)
        if m:
            out.append(("http.title", m.group(1).strip()[:MAX_VALUE]))
        if body.strip():
            out.append(("http.body", body[:2048]))
        return
    if head.startswith("RTSP/"):
        for name, value in _HEADER.findall(text[:2048]):
            if name.lower() == "server":
                out.append(("rtsp.server", value.strip()[:MAX_VALUE]))
        return
    if head.startswith("SIP/"):
        for name, value in _HEADER.findall(text[:2048]):
            if name.lower() in ("server", "user-agent"):
                out.append(("sip.agent", value.strip()[:MAX_VALUE]))
        return
    if head.startswith("SSH-"):
        out.append(("ssh", text.split("\n", 1)[0].strip()[:MAX_VALUE]))
        return
    if head[:3] == "220":
        greeting = " ".join(line[4:].strip() for line in text[:1024].splitlines() if line[:3] == "220")
        out.append(("ftp", greeting[:MAX_VALUE]))
        out.append(("smtp", greeting[:MAX_VALUE]))
        return
    out.append(("telnet", text[:1024]))
