"""Certificate facts (parsed with ``cryptography``, never validated) and their banner rendering.

:func:`cert_facts` turns a DER certificate into the v2 ScanEvent's ``TlsCertificate`` record;
:func:`render_tls_block` is the text that starts a TLS port's banner, the interface the device
estimator reads::

    TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256
    subject: CN=IPC-HFW1320S, O=Dahua
    issuer: CN=IPC-HFW1320S, O=Dahua
    san: DNS:ipc.local, IP:192.168.1.108

Names are written RFC 4514 style (values escaped), attributes in the order CN, O, OU, then the
others in certificate order; the ``san:`` line is left out when there are none.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import NameOID

_FIRST = (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def name_text(name: x509.Name) -> str:
    """``CN=..., O=..., OU=..., <others>`` (RFC 4514 escaping; one entry per attribute)."""
    attrs = list(name)
    ordered = [a for oid in _FIRST for a in attrs if a.oid == oid]
    ordered += [a for a in attrs if a.oid not in _FIRST]
    parts = []
    for a in ordered:
        try:
            parts.append(a.rfc4514_string())
        except (ValueError, TypeError):  # pragma: no cover - odd attribute types
            parts.append(f"{a.oid.dotted_string}={a.value!r}")
    return ", ".join(parts)


def _san_text(gn: x509.GeneralName) -> str:
    if isinstance(gn, x509.DNSName):
        return f"DNS:{gn.value}"
    if isinstance(gn, x509.IPAddress):
        return f"IP:{gn.value}"
    if isinstance(gn, x509.RFC822Name):
        return f"email:{gn.value}"
    if isinstance(gn, x509.UniformResourceIdentifier):
        return f"URI:{gn.value}"
    if isinstance(gn, x509.DirectoryName):
        return f"DirName:{name_text(gn.value)}"
    if isinstance(gn, x509.RegisteredID):
        return f"RID:{gn.value.dotted_string}"
    return f"othername:{getattr(gn, 'type_id', None) and gn.type_id.dotted_string}"


def sans(cert: x509.Certificate) -> list[str]:
    """The subject alternative names as ``DNS:...``, ``IP:...`` (empty when none or unreadable)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [_san_text(gn) for gn in ext.value]


def _micros(when: dt.datetime) -> int:
    return int((when - _EPOCH) / dt.timedelta(microseconds=1))


def key_facts(cert: x509.Certificate) -> tuple[str, int]:
    """(key type, bits): rsa/ec/dsa/ed25519/ed448/x25519/x448, or ('unknown', 0)."""
    try:
        key = cert.public_key()
    except (ValueError, TypeError, NotImplementedError):
        return "unknown", 0
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ec-{key.curve.name}", key.key_size
    if isinstance(key, dsa.DSAPublicKey):
        return "dsa", key.key_size
    for cls, name, bits in ((ed25519.Ed25519PublicKey, "ed25519", 256), (ed448.Ed448PublicKey, "ed448", 456),
                            (x25519.X25519PublicKey, "x25519", 256), (x448.X448PublicKey, "x448", 448)):
        if isinstance(key, cls):
            return name, bits
    return "unknown", 0


def cert_facts(der: bytes) -> dict[str, Any]:
    """The ``TlsCertificate`` record of a DER certificate. A certificate ``cryptography`` cannot
    parse still gets its SHA-256 fingerprint, with ``parse_error`` saying why. Devices of one model
    often share one certificate: parsed ones are remembered (the last 4,096 distinct ones)."""
    facts = _cert_facts(bytes(der))
    return {**facts, "sans": list(facts["sans"])}


@functools.lru_cache(maxsize=4096)
def _cert_facts(der: bytes) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "sha256": hashlib.sha256(der).hexdigest(), "subject": "", "issuer": "", "sans": [], "serial": "",
        "not_before": None, "not_after": None, "key_type": "", "key_bits": 0, "signature_algorithm": "",
        "self_issued": False, "parse_error": None,
    }
    try:
        cert = x509.load_der_x509_certificate(der)
        facts["subject"], facts["issuer"] = name_text(cert.subject), name_text(cert.issuer)
        facts["self_issued"] = cert.subject == cert.issuer
        facts["serial"] = format(cert.serial_number, "x")
        facts["not_before"] = _micros(cert.not_valid_before_utc)
        facts["not_after"] = _micros(cert.not_valid_after_utc)
        facts["sans"] = sans(cert)
        facts["key_type"], facts["key_bits"] = key_facts(cert)
        oid = cert.signature_algorithm_oid
        facts["signature_algorithm"] = getattr(oid, "_name", None) or oid.dotted_string
    except (ValueError, TypeError) as exc:
        facts["parse_error"] = str(exc)[:200] or type(exc).__name__
    return facts


def tls_record(version: str, cipher: str, leaf_der: bytes | None, chain: list[bytes]) -> dict[str, Any]:
    """The v2 ScanEvent's ``tls`` record."""
    return {"version": version, "cipher": cipher,
            "leaf": cert_facts(leaf_der) if leaf_der else None,
            "chain": [cert_facts(d) for d in chain]}


def render_tls_block(tls: dict[str, Any]) -> str:
    """The TLS lines of a banner (each ends with a newline)."""
    lines = [f"TLS {tls['version']} {tls['cipher']}".rstrip()]
    leaf = tls.get("leaf")
    if leaf:
        lines.append(f"subject: {leaf['subject']}")
        lines.append(f"issuer: {leaf['issuer']}")
        if leaf["sans"]:
            lines.append(f"san: {', '.join(leaf['sans'])}")
    return "".join(line + "\n" for line in lines)
