"""How well the knowledge base names devices, measured on a labelled corpus of host records.

A host record is one JSON object per line::

    {"ip": "198.18.0.1", "ports": [80, 554], "banners": {"80": "HTTP/1.1 401 ..."},
     "tls": {"443": "TLS TLSv1.2 ...\\nsubject: CN=..."},
     "expect": {"vendor": "Dahua", "model": "IPC-HFW1320S", "category": "camera"}}

``banners`` (and ``tls``, the TLS grabber's text, same shape) map ports to what they said; ``expect``
is optional (an unlabelled record can still be estimated). Expected ``vendor`` null means "no IoT
vendor to name" (an ordinary server, or a generic embedded platform with category ``embedded``);
``model`` is given only when the banners state it.

:func:`evaluate` reports, over the labelled records:

- vendor recall: records with a vendor whose estimate names that vendor;
- vendor precision: of the records where a vendor was named, the share named right;
- wrong vendor: records where a vendor was named and it is not the expected one (null included);
- model recall: records whose banners state a model, estimated with that model;
- category: records (vendor or embedded) estimated with the expected category.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from scanflow.estimate import Estimate, Estimator

_NORM = re.compile(r"[^a-z0-9]+")
GENERIC_VENDOR = "various"


class CorpusError(ValueError):
    """A host record file is unreadable or a record is malformed; the message names the fix."""


@dataclass(frozen=True)
class HostRecord:
    ip: str
    ports: frozenset[int]
    banners: dict[int, bytes]
    expect: dict[str, Any] | None = None


def parse_record(obj: Any, where: str) -> HostRecord:
    """One host record from its parsed JSON; :class:`CorpusError` names what to fix."""
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: a host record is a JSON object with ports and banners")
    ports = obj.get("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, int) and not isinstance(p, bool)
                                              and 1 <= p <= 65535 for p in ports):
        raise CorpusError(f"{where}: ports must be a list of port numbers 1..65535")
    banners: dict[int, bytes] = {}
    for key in ("banners", "tls"):
        section = obj.get(key, {})
        if not isinstance(section, dict):
            raise CorpusError(f'{where}: {key} must be an object of port -> text, e.g. {{"80": "HTTP/1.1 ..."}}')
        for port, text in section.items():
            if not str(port).isdigit() or not 1 <= int(port) <= 65535 or not isinstance(text, str):
                raise CorpusError(f'{where}: {key} entry {str(port)[:20]!r} must be "PORT": "text" with PORT 1..65535')
            banners[int(port)] = text.encode("latin-1", "replace") if all(ord(c) < 256 for c in text) \
                else text.encode("utf-8")
    if not ports and not banners:
        raise CorpusError(f"{where}: nothing to estimate; give ports and/or banners")
    expect = obj.get("expect")
    if expect is not None and not isinstance(expect, dict):
        raise CorpusError(f"{where}: expect must be an object with vendor, model and category")
    return HostRecord(str(obj.get("ip", "")), frozenset(ports) | frozenset(banners), banners, expect)


def read_records(path: str | Path) -> list[HostRecord]:
    """Host records from a JSON-lines file (or a single JSON object/array)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read it ({exc}); give a UTF-8 JSON-lines file of host records") from None
    return parse_records(text, str(path))


def parse_records(text: str, source: str) -> list[HostRecord]:
    stripped = text.strip()
    if stripped.startswith("[") or (stripped.startswith("{") and "\n{" not in stripped):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the syntax") from None
        objs = obj if isinstance(obj, list) else [obj]
        return [parse_record(o, f"{source}: record {i + 1}") for i, o in enumerate(objs)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{source}:{n}: not valid JSON ({exc.msg}); one host record per line") from None
        out.append(parse_record(obj, f"{source}:{n}"))
    if not out:
        raise CorpusError(f"{source}: no host records; write one JSON object per line")
    return out


def _norm(text: str | None) -> str:
    return _NORM.sub("", (text or "").lower())


def model_matches(expected: str, stated: str | None) -> bool:
    """The stated model names the expected one: equal once case and punctuation are dropped, or one
    contains the other (``"TL-WR841N"`` and ``"WR841N"``)."""
    e, s = _norm(expected), _norm(stated)
    return bool(e) and bool(s) and len(s) >= 3 and (e == s or e in s or s in e)


@dataclass
class Tally:
    records: int = 0
    with_vendor: int = 0
    vendor_right: int = 0
    vendor_named: int = 0
    vendor_wrong: int = 0
    with_model: int = 0
    model_right: int = 0
    with_category: int = 0
    category_right: int = 0
    misses: list[str] = field(default_factory=list)

    def rates(self) -> dict[str, float | int]:
        def share(a: int, b: int) -> float:
            return round(a / b, 4) if b else 0.0
        return {"records": self.records, "vendor_recall": share(self.vendor_right, self.with_vendor),
                "vendor_precision": share(self.vendor_right, self.vendor_named),
                "wrong_vendor": share(self.vendor_wrong, self.records),
                "model_recall": share(self.model_right, self.with_model),
                "category": share(self.category_right, self.with_category),
                "with_vendor": self.with_vendor, "with_model": self.with_model}


def evaluate(estimator: Estimator, records: Iterable[HostRecord]) -> Tally:
    """Estimate every labelled record and count what the estimates got right and wrong."""
    tally = Tally()
    for rec in records:
        if rec.expect is None:
            continue
        est = estimator.estimate(rec.ports, rec.banners)
        tally.records += 1
        want_vendor = rec.expect.get("vendor")
        want_model = rec.expect.get("model")
        want_category = rec.expect.get("category")
        named = est.vendor if est.vendor and est.vendor != GENERIC_VENDOR else None
        if named:
            tally.vendor_named += 1
        if want_vendor:
            tally.with_vendor += 1
            if named and named.lower() == want_vendor.lower():
                tally.vendor_right += 1
        if named and (not want_vendor or named.lower() != want_vendor.lower()):
            tally.vendor_wrong += 1
        if want_model:
            tally.with_model += 1
            if named and want_vendor and named.lower() == want_vendor.lower() \
                    and model_matches(want_model, est.stated_model):
                tally.model_right += 1
        if want_category:
            tally.with_category += 1
            if est.category == want_category:
                tally.category_right += 1
        ok = ((named or None) == (want_vendor or None) if want_vendor or named else True) and \
            (not want_model or model_matches(want_model, est.stated_model)) and \
            (not want_category or est.category == want_category)
        if not ok:
            tally.misses.append(f"{rec.ip}: expected {want_vendor}/{want_model}/{want_category}, "
                                f"got {describe(est)}")
    return tally


def describe(est: Estimate) -> str:
    if not est.estimated:
        return f"none (candidate {est.candidate}, {est.confidence:.2f})"
    return f"{est.vendor}/{est.stated_model}/{est.category} ({est.model}, {est.confidence:.2f})"
