"""The device and malware knowledge base: which ports each IoT device model uses, which short banner
keywords identify it, and which ports malware uses on the devices it infects.

The knowledge lives in TOML files (``scanflow/data/kb/*.toml`` built in, plus any files a user passes)
with ``[[device]]`` and ``[[malware]]`` tables; the format is documented in ``docs/POLICY.md``. Every
file is validated on load and a mistake raises :class:`KnowledgeError` naming the file, the entry and
the fix. The loaded :class:`KnowledgeBase` is immutable and carries a content version, so an estimate
can say which knowledge produced it.

Keywords are matched word by word (see :func:`keyword_words`), never as regular expressions: a
keyword is a short phrase a device says about itself, written in this project's own words.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

#: Device categories, a closed set so that malware ``infects`` lists can be checked.
CATEGORIES: tuple[str, ...] = (
    "camera", "dvr", "router", "nas", "printer", "voip", "building", "ics", "media", "mqtt",
    "smarthome",
)
SCHEMA_VERSION = 1
#: A keyword needs this many letters and digits: shorter ones ("s7", "hp") match too much by chance.
MIN_KEYWORD_CHARS = 4

_WORDS = re.compile(rb"[a-z]+|[0-9]+")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")

_DEVICE_KEYS = {"id": str, "vendor": str, "name": str, "category": str, "ports": list,
                "keywords": list, "signature_ports": list, "notes": str}
_DEVICE_REQUIRED = ("id", "vendor", "name", "category", "ports", "keywords")
_MALWARE_KEYS = {"id": str, "name": str, "aliases": list, "first_seen": int, "infects": list,
                 "targets": list, "target_ports": list, "listen_ports": list, "c2_ports": list,
                 "notes": str, "active": bool}
_MALWARE_REQUIRED = ("id", "name", "infects", "target_ports")


class KnowledgeError(ValueError):
    """A knowledge-base file is unreadable or an entry is invalid; the message names the fix."""


def keyword_words(text: str | bytes) -> tuple[bytes, ...]:
    """How keywords and banners are cut into words: ASCII-lower-cased, split into runs of letters and
    runs of digits, everything else a separator. ``"DVRDVS-Webs"`` -> ``(b"dvrdvs", b"webs")``,
    ``"HG532e"`` -> ``(b"hg", b"532", b"e")``; so the keyword ``hg532`` matches ``HG532e``."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return tuple(_WORDS.findall(data.lower()))


@dataclass(frozen=True)
class DeviceModel:
    """One device model or family: its category, the TCP ports it uses, and the banner keywords
    that identify it. ``signature_ports`` are ports distinctive enough to suggest the model alone."""

    id: str
    vendor: str
    name: str
    category: str
    ports: frozenset[int]
    keywords: tuple[str, ...]
    signature_ports: frozenset[int] = frozenset()
    notes: str = ""
    source: str = ""


@dataclass(frozen=True)
class Malware:
    """One malware family: the device categories (and optionally specific models) it infects, the
    ports it attacks on victims (``target_ports``), ports it opens on an infected device
    (``listen_ports``), and its command-and-control ports (``c2_ports``, on the attacker's servers,
    so never probed on victims)."""

    id: str
    name: str
    infects: frozenset[str]
    target_ports: frozenset[int]
    listen_ports: frozenset[int] = frozenset()
    c2_ports: frozenset[int] = frozenset()
    targets: frozenset[str] = frozenset()
    aliases: tuple[str, ...] = ()
    first_seen: int | None = None
    notes: str = ""
    source: str = ""
    #: Known active exploitation (public threat reports of recent campaigns): the devices it infects
    #: are rescanned on a shorter back-off cap by the adaptive policy.
    active: bool = False

    @property
    def scan_ports(self) -> frozenset[int]:
        """Ports worth probing on a device this malware infects: attacked or opened by it."""
        return self.target_ports | self.listen_ports


@dataclass(frozen=True)
class KnowledgeBase:
    """All device models and malware families loaded, with a content version (a digest of the
    canonical entries, so the same knowledge has the same version whatever the file layout)."""

    devices: tuple[DeviceModel, ...]
    malware: tuple[Malware, ...]
    sources: tuple[str, ...] = ()
    version: str = ""
    _by_id: dict[str, DeviceModel] = field(default_factory=dict, repr=False, compare=False)
    _scan_ports: dict[str, frozenset[int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {d.id: d for d in self.devices}
        self._by_id.update(by_id)
        for device in self.devices:
            ports = set(device.ports)
            for mw in self.malware_for(device):
                ports |= mw.scan_ports
            self._scan_ports[device.id] = frozenset(ports)
        if not self.version:
            object.__setattr__(self, "version", _content_version(self.devices, self.malware))

    def device(self, device_id: str) -> DeviceModel:
        """The model with this id; ``KeyError`` if unknown."""
        return self._by_id[device_id]

    def malware_for(self, device: DeviceModel) -> tuple[Malware, ...]:
        """Malware that infects this model: by its category or by naming the model."""
        return tuple(m for m in self.malware if device.category in m.infects or device.id in m.targets)

    def scan_ports(self, device_id: str) -> frozenset[int]:
        """Ports to probe on a host estimated as this model: its ports and its malware's ports."""
        return self._scan_ports[device_id]

    def device_ports(self) -> frozenset[int]:
        """Every port any device model uses."""
        return frozenset().union(*(d.ports for d in self.devices))

    def exploited_models(self) -> frozenset[str]:
        """Ids of the models infected by a malware family with known active exploitation."""
        return frozenset(d.id for d in self.devices if any(m.active for m in self.malware_for(d)))

    def malware_ports(self) -> frozenset[int]:
        """Every port worth probing for any malware (targets and listeners, not C2)."""
        return frozenset().union(*(m.scan_ports for m in self.malware))

    def counts(self) -> dict[str, int]:
        """Entry counts per category, plus ``devices`` and ``malware`` totals."""
        out = {c: 0 for c in CATEGORIES}
        for d in self.devices:
            out[d.category] += 1
        out["devices"] = len(self.devices)
        out["malware"] = len(self.malware)
        return out


def builtin_files() -> list[Path]:
    """The knowledge files shipped in ``scanflow/data/kb``, sorted by name."""
    root = resources.files("scanflow") / "data" / "kb"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def load_knowledge(extra_files: Iterable[str | Path] = (), *, builtin: bool = True) -> KnowledgeBase:
    """Load and validate the built-in knowledge (unless ``builtin=False``) and the user's files.

    Ids must be unique across all files; a user file that wants to refine a built-in entry gives it
    a new id. Raises :class:`KnowledgeError` on the first problem found.
    """
    files = (builtin_files() if builtin else []) + [Path(f) for f in extra_files]
    devices: list[DeviceModel] = []
    malware: list[Malware] = []
    for path in files:
        if not path.is_file():
            raise KnowledgeError(f"{path}: knowledge file not found; check the path given with --kb")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise KnowledgeError(f"{path}: not valid UTF-8 TOML ({exc}); fix the syntax") from None
        d, m = parse_knowledge(data, source=path.name)
        devices.extend(d)
        malware.extend(m)
    return build_knowledge(devices, malware, sources=tuple(str(p.name) for p in files))


def build_knowledge(devices: Sequence[DeviceModel], malware: Sequence[Malware],
                    sources: tuple[str, ...] = ()) -> KnowledgeBase:
    """Check cross-entry rules (unique ids, malware targets name known models) and build the base."""
    seen: dict[str, str] = {}
    for entry in (*devices, *malware):
        if entry.id in seen:
            raise KnowledgeError(f"{entry.source}: id {entry.id!r} is already defined in {seen[entry.id]}; "
                                 "ids are unique across all knowledge files, choose another")
        seen[entry.id] = entry.source or "?"
    device_ids = {d.id for d in devices}
    for mw in malware:
        unknown = sorted(mw.targets - device_ids)
        if unknown:
            raise KnowledgeError(f"{mw.source}: malware {mw.id!r} targets unknown device ids {unknown}; "
                                 "use ids of [[device]] entries")
    return KnowledgeBase(tuple(devices), tuple(malware), sources)


def parse_knowledge(data: dict[str, Any], source: str = "<memory>") -> tuple[list[DeviceModel], list[Malware]]:
    """Validate one parsed TOML document and return its device and malware entries."""
    unknown_top = sorted(set(data) - {"kb", "device", "malware"})
    if unknown_top:
        raise KnowledgeError(f"{source}: unknown top-level keys {unknown_top}; "
                             "a knowledge file has [kb], [[device]] and [[malware]] only")
    meta = data.get("kb", {})
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_VERSION:
        raise KnowledgeError(f"{source}: missing or unsupported [kb] schema; start the file with "
                             f"[kb] schema = {SCHEMA_VERSION}")
    devices = [_device(e, f"{source}: device #{i + 1}", source)
               for i, e in enumerate(_table_list(data, "device", source))]
    malware = [_malware(e, f"{source}: malware #{i + 1}", source)
               for i, e in enumerate(_table_list(data, "malware", source))]
    return devices, malware


def _table_list(data: dict[str, Any], key: str, source: str) -> list[dict[str, Any]]:
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise KnowledgeError(f"{source}: {key} must be an array of tables; write [[{key}]]")
    return entries


def _check_keys(entry: dict[str, Any], allowed: dict[str, type], required: Sequence[str], where: str) -> str:
    where = f"{where} ({entry['id']})" if isinstance(entry.get("id"), str) else where
    for key in required:
        if key not in entry:
            raise KnowledgeError(f"{where}: missing required key {key!r}")
    for key, value in entry.items():
        if key not in allowed:
            raise KnowledgeError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(allowed))}")
        if not isinstance(value, allowed[key]) or (isinstance(value, bool) and allowed[key] is not bool):
            raise KnowledgeError(f"{where}: {key} must be a {allowed[key].__name__}, "
                                 f"got {type(value).__name__}")
    if not _ID.match(entry["id"]):
        raise KnowledgeError(f"{where}: id {entry['id']!r} must be 2-64 characters of a-z, 0-9, "
                             "'.', '_', '-', starting with a letter or digit")
    return where


def _ports(value: list[Any], key: str, where: str, *, allow_empty: bool = False) -> frozenset[int]:
    if not value and not allow_empty:
        raise KnowledgeError(f"{where}: {key} is empty; list at least one TCP port")
    for port in value:
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise KnowledgeError(f"{where}: {key} has {port!r}; ports are whole numbers 1..65535")
    if len(set(value)) != len(value):
        raise KnowledgeError(f"{where}: {key} lists a port twice; remove the duplicate")
    return frozenset(value)


def _strings(value: list[Any], key: str, where: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise KnowledgeError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _device(entry: dict[str, Any], where: str, source: str) -> DeviceModel:
    where = _check_keys(entry, _DEVICE_KEYS, _DEVICE_REQUIRED, where)
    if entry["category"] not in CATEGORIES:
        raise KnowledgeError(f"{where}: category {entry['category']!r} is not one of {', '.join(CATEGORIES)}")
    ports = _ports(entry["ports"], "ports", where)
    signature = _ports(entry.get("signature_ports", []), "signature_ports", where, allow_empty=True)
    if not signature <= ports:
        raise KnowledgeError(f"{where}: signature_ports {sorted(signature - ports)} are not in ports; "
                             "add them to ports")
    keywords = _strings(entry["keywords"], "keywords", where)
    if not keywords:
        raise KnowledgeError(f"{where}: keywords is empty; give at least one word the device's banners contain")
    for kw in keywords:
        if not kw.isascii() or sum(len(w) for w in keyword_words(kw)) < MIN_KEYWORD_CHARS:
            raise KnowledgeError(f"{where}: keyword {kw!r} needs at least {MIN_KEYWORD_CHARS} ASCII "
                                 "letters or digits; make it more specific")
    if len({keyword_words(k) for k in keywords}) != len(keywords):
        raise KnowledgeError(f"{where}: two keywords are the same words; remove one")
    return DeviceModel(id=entry["id"], vendor=entry["vendor"], name=entry["name"],
                       category=entry["category"], ports=ports, keywords=keywords,
                       signature_ports=signature, notes=entry.get("notes", ""), source=source)


def _malware(entry: dict[str, Any], where: str, source: str) -> Malware:
    where = _check_keys(entry, _MALWARE_KEYS, _MALWARE_REQUIRED, where)
    infects = _strings(entry["infects"], "infects", where)
    bad = sorted(set(infects) - set(CATEGORIES))
    if not infects or bad:
        raise KnowledgeError(f"{where}: infects must list device categories from {', '.join(CATEGORIES)}"
                             + (f"; unknown: {bad}" if bad else ""))
    first_seen = entry.get("first_seen")
    if first_seen is not None and not 1980 <= first_seen <= 2100:
        raise KnowledgeError(f"{where}: first_seen {first_seen} is not a plausible year")
    return Malware(id=entry["id"], name=entry["name"], infects=frozenset(infects),
                   target_ports=_ports(entry["target_ports"], "target_ports", where),
                   listen_ports=_ports(entry.get("listen_ports", []), "listen_ports", where, allow_empty=True),
                   c2_ports=_ports(entry.get("c2_ports", []), "c2_ports", where, allow_empty=True),
                   targets=frozenset(_strings(entry.get("targets", []), "targets", where)),
                   aliases=_strings(entry.get("aliases", []), "aliases", where),
                   first_seen=first_seen, notes=entry.get("notes", ""), source=source,
                   active=bool(entry.get("active", False)))


def _content_version(devices: Sequence[DeviceModel], malware: Sequence[Malware]) -> str:
    canon = {
        "devices": sorted([d.id, d.category, sorted(d.ports), list(d.keywords), sorted(d.signature_ports)]
                          for d in devices),
        "malware": sorted([m.id, sorted(m.infects), sorted(m.targets), sorted(m.target_ports),
                           sorted(m.listen_ports), sorted(m.c2_ports)] + ([True] if m.active else [])
                          for m in malware),
    }
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
