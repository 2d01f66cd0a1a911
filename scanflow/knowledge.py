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
    "smarthome", "embedded",
)
#: The newest knowledge-file schema. Schema 1 files (keywords and ports only) still load; schema 2
#: adds banner ``rules`` with a model capture group, device ``traits`` and ``generic`` platforms, and
#: malware targeting by vendor, trait and model instead of whole categories.
SCHEMA_VERSION = 2
SCHEMAS = (1, 2)
#: The fields where the simulator shows what a device says about itself (banners.render puts it in
#: the Server header, page title and authentication realm, RTSP Server, greetings and Telnet text).
WORLD_FIELDS = frozenset({"http.server", "http.title", "http.realm", "rtsp.server", "telnet", "ftp", "text"})
#: Where a rule looks: the fields :func:`scanflow.banner_fields.banner_fields` cuts from a banner.
RULE_FIELDS: tuple[str, ...] = (
    "http.server", "http.realm", "http.title", "http.body", "tls.subject", "tls.issuer", "tls.san",
    "rtsp.server", "sip.agent", "ssh", "ftp", "smtp", "telnet", "text",
)
#: A keyword needs this many letters and digits: shorter ones ("s7", "hp") match too much by chance.
MIN_KEYWORD_CHARS = 4

_WORDS = re.compile(rb"[a-z]+|[0-9]+")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")

_DEVICE_KEYS = {"id": str, "vendor": str, "name": str, "category": str, "ports": list,
                "keywords": list, "signature_ports": list, "notes": str}
_DEVICE_KEYS_2 = {**_DEVICE_KEYS, "rules": list, "traits": list, "generic": bool}
_DEVICE_REQUIRED = ("id", "vendor", "name", "category", "ports", "keywords")
_DEVICE_REQUIRED_2 = ("id", "vendor", "name", "category", "ports")
_RULE_KEYS = {"on": str, "match": str, "weight": float, "example": str, "model": str}
_MALWARE_KEYS = {"id": str, "name": str, "aliases": list, "first_seen": int, "infects": list,
                 "targets": list, "target_ports": list, "listen_ports": list, "c2_ports": list,
                 "notes": str, "active": bool}
_MALWARE_KEYS_2 = {**_MALWARE_KEYS, "attacks": list}
_ATTACK_KEYS = {"trait": str, "vendor": str, "device": str, "ports": list, "why": str}
_MALWARE_REQUIRED = ("id", "name", "infects", "target_ports")
_MALWARE_REQUIRED_2 = ("id", "name", "target_ports")
_TELNET_CATEGORIES = ("camera", "dvr", "router")
_TRAIT = re.compile(r"^[a-z0-9][a-z0-9-]{1,40}$")


class KnowledgeError(ValueError):
    """A knowledge-base file is unreadable or an entry is invalid; the message names the fix."""


def keyword_words(text: str | bytes) -> tuple[bytes, ...]:
    """How keywords and banners are cut into words: ASCII-lower-cased, split into runs of letters and
    runs of digits, everything else a separator. ``"DVRDVS-Webs"`` -> ``(b"dvrdvs", b"webs")``,
    ``"HG532e"`` -> ``(b"hg", b"532", b"e")``; so the keyword ``hg532`` matches ``HG532e``."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return tuple(_WORDS.findall(data.lower()))


@dataclass(frozen=True)
class Rule:
    """A regular expression over one field of a banner (``on``, one of :data:`RULE_FIELDS`), matched
    case-insensitively; a named group ``model`` captures the model the device states. ``example`` is
    a value the device really shows in that field: the rule must match it (checked on load), and the
    simulator draws banners from it. ``model`` is a fixed model name for rules without a capture."""

    on: str
    match: str
    weight: float = 1.0
    example: str = ""
    model: str = ""

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.match, re.IGNORECASE)


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
    #: Schema 2: banner rules (vendor and product family, often the model) and traits malware targets.
    rules: tuple[Rule, ...] = ()
    traits: frozenset[str] = frozenset()
    #: A generic platform (BusyBox, Boa, GoAhead...): named only when no vendor's product matched.
    generic: bool = False

    @property
    def world_keywords(self) -> tuple[str, ...]:
        """What a simulated instance of this device says about itself: its keywords, else the
        examples of its rules (so the simulator and the estimator share one knowledge)."""
        if self.keywords:
            return self.keywords
        return tuple(r.example for r in self.rules if r.on in WORLD_FIELDS and r.weight >= 0.5)


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
    #: Schema 2: what it attacks, each with the ports it uses there: devices with a trait
    #: (``busybox``, ``telnet-login``, ``realtek-sdk``...), a vendor's devices, or one device entry.
    attacks: tuple["Attack", ...] = ()

    @property
    def scan_ports(self) -> frozenset[int]:
        """Ports worth probing on a device this malware infects: attacked or opened by it."""
        return self.target_ports | self.listen_ports

    def attack_on(self, device: "DeviceModel") -> tuple[frozenset[int], str] | None:
        """The ports this malware uses against ``device`` and why, or None when it does not target it.
        Schema 1 entries (no ``attacks``) target whole categories and named models on all their ports."""
        if not self.attacks:
            if device.id in self.targets:
                return self.scan_ports, f"targets {device.id}"
            if device.category in self.infects:
                return self.scan_ports, f"infects {device.category} devices"
            return None
        ports: set[int] = set()
        why: list[str] = []
        for attack in self.attacks:
            if attack.applies(device):
                ports |= attack.ports
                why.append(attack.describe())
        if not why:
            return None
        return frozenset(ports) | self.listen_ports, "; ".join(why)

    def reason(self, device: "DeviceModel") -> str | None:
        """Why this malware applies to ``device`` (None when it does not)."""
        hit = self.attack_on(device)
        return hit[1] if hit else None


@dataclass(frozen=True)
class Attack:
    """One way a malware family gets into devices: the devices (by ``trait``, ``vendor`` or
    ``device`` id, exactly one) and the TCP ports it uses on them; ``why`` is the public fact."""

    kind: str
    value: str
    ports: frozenset[int]
    why: str = ""

    def applies(self, device: "DeviceModel") -> bool:
        if self.kind == "trait":
            return self.value in device.traits
        if self.kind == "vendor":
            return device.vendor.lower() == self.value.lower()
        return device.id == self.value

    def describe(self) -> str:
        ports = ",".join(map(str, sorted(self.ports)))
        return f"{self.kind} {self.value} on {ports}" + (f" ({self.why})" if self.why else "")


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
            for mw in self.malware:
                hit = mw.attack_on(device)
                if hit is not None:
                    ports |= hit[0]
            self._scan_ports[device.id] = frozenset(ports)
        if not self.version:
            object.__setattr__(self, "version", _content_version(self.devices, self.malware))

    def device(self, device_id: str) -> DeviceModel:
        """The model with this id; ``KeyError`` if unknown."""
        return self._by_id[device_id]

    def malware_for(self, device: DeviceModel) -> tuple[Malware, ...]:
        """Malware that infects this model: by its category or by naming the model."""
        return tuple(m for m in self.malware if m.reason(device) is not None)

    def malware_reasons(self, device: DeviceModel) -> tuple[tuple[Malware, str], ...]:
        """The malware that applies to ``device``, each with why (targeted model, vendor or trait)."""
        return tuple((m, r) for m in self.malware if (r := m.reason(device)) is not None)

    def rule_count(self) -> int:
        """Banner rules plus keywords over all devices."""
        return sum(len(d.rules) + len(d.keywords) for d in self.devices)

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
        unknown = sorted((mw.targets | {a.value for a in mw.attacks if a.kind == "device"}) - device_ids)
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
    if not isinstance(meta, dict) or meta.get("schema") not in SCHEMAS:
        raise KnowledgeError(f"{source}: missing or unsupported [kb] schema; start the file with "
                             f"[kb] schema = {SCHEMA_VERSION}")
    schema = meta["schema"]
    devices = [_device(e, f"{source}: device #{i + 1}", source, schema)
               for i, e in enumerate(_table_list(data, "device", source))]
    malware = [_malware(e, f"{source}: malware #{i + 1}", source, schema)
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


def _device(entry: dict[str, Any], where: str, source: str, schema: int = 1) -> DeviceModel:
    if schema >= 2:
        where = _check_keys(entry, _DEVICE_KEYS_2, _DEVICE_REQUIRED_2, where)
    else:
        where = _check_keys(entry, _DEVICE_KEYS, _DEVICE_REQUIRED, where)
    if entry["category"] not in CATEGORIES:
        raise KnowledgeError(f"{where}: category {entry['category']!r} is not one of {', '.join(CATEGORIES)}")
    ports = _ports(entry["ports"], "ports", where)
    signature = _ports(entry.get("signature_ports", []), "signature_ports", where, allow_empty=True)
    if not signature <= ports:
        raise KnowledgeError(f"{where}: signature_ports {sorted(signature - ports)} are not in ports; "
                             "add them to ports")
    keywords = _strings(entry.get("keywords", []), "keywords", where)
    rules = tuple(_rule(r, f"{where} rule #{i + 1}") for i, r in enumerate(_rule_list(entry, where)))
    traits = _strings(entry.get("traits", []), "traits", where)
    for trait in traits:
        if not _TRAIT.match(trait):
            raise KnowledgeError(f"{where}: trait {trait!r} must be 2-41 characters of a-z, 0-9 and '-'")
    if not keywords and not rules:
        raise KnowledgeError(f"{where}: keywords is empty; give at least one word the device's banners contain"
                             " (or, in schema 2, a [[device.rules]] entry)")
    for kw in keywords:
        if not kw.isascii() or sum(len(w) for w in keyword_words(kw)) < MIN_KEYWORD_CHARS:
            raise KnowledgeError(f"{where}: keyword {kw!r} needs at least {MIN_KEYWORD_CHARS} ASCII "
                                 "letters or digits; make it more specific")
    if len({keyword_words(k) for k in keywords}) != len(keywords):
        raise KnowledgeError(f"{where}: two keywords are the same words; remove one")
    if schema < 2 and entry["category"] in _TELNET_CATEGORIES:
        # Schema 1 malware infected whole categories; its telnet families all took cameras, DVRs and
        # routers on 23 and 2323, so such a device of an old file keeps being one they attack.
        traits = (*traits, "telnet-login", "telnet-2323")
    return DeviceModel(id=entry["id"], vendor=entry["vendor"], name=entry["name"],
                       category=entry["category"], ports=ports, keywords=keywords,
                       signature_ports=signature, notes=entry.get("notes", ""), source=source,
                       rules=rules, traits=frozenset(traits), generic=bool(entry.get("generic", False)))


def _rule_list(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    rules = entry.get("rules", [])
    if not all(isinstance(r, dict) for r in rules):
        raise KnowledgeError(f"{where}: rules must be tables; write [[device.rules]] or "
                             "rules = [{ on = \"http.server\", match = \"...\", example = \"...\" }]")
    return rules


def _rule(entry: dict[str, Any], where: str) -> Rule:
    for key in ("on", "match", "example"):
        if key not in entry:
            raise KnowledgeError(f"{where}: missing required key {key!r}")
    for key, value in entry.items():
        if key not in _RULE_KEYS:
            raise KnowledgeError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(_RULE_KEYS))}")
        want = _RULE_KEYS[key]
        if not (isinstance(value, want) or (want is float and isinstance(value, int)
                                            and not isinstance(value, bool))):
            raise KnowledgeError(f"{where}: {key} must be a {want.__name__}, got {type(value).__name__}")
    if entry["on"] not in RULE_FIELDS:
        raise KnowledgeError(f"{where}: on = {entry['on']!r} is not a banner field; use one of "
                             f"{', '.join(RULE_FIELDS)}")
    try:
        regex = re.compile(entry["match"], re.IGNORECASE)
    except re.error as exc:
        raise KnowledgeError(f"{where}: match {entry['match']!r} is not a valid regular expression ({exc})") from None
    if set(regex.groupindex) - {"model"}:
        raise KnowledgeError(f"{where}: the only named group allowed is (?P<model>...)")
    weight = float(entry.get("weight", 1.0))
    if not 0.0 < weight <= 2.0:
        raise KnowledgeError(f"{where}: weight {weight} must be in (0, 2]")
    if not regex.search(entry["example"]):
        raise KnowledgeError(f"{where}: match {entry['match']!r} does not match its own example "
                             f"{entry['example']!r}; fix one of them")
    return Rule(on=entry["on"], match=entry["match"], weight=weight, example=entry["example"],
                model=entry.get("model", ""))


def _malware(entry: dict[str, Any], where: str, source: str, schema: int = 1) -> Malware:
    if schema >= 2:
        where = _check_keys(entry, _MALWARE_KEYS_2, _MALWARE_REQUIRED_2, where)
    else:
        where = _check_keys(entry, _MALWARE_KEYS, _MALWARE_REQUIRED, where)
    infects = _strings(entry.get("infects", []), "infects", where)
    attacks = tuple(_attack(a, f"{where} attack #{i + 1}") for i, a in enumerate(entry.get("attacks", [])))
    bad = sorted(set(infects) - set(CATEGORIES))
    for i, attack in enumerate(attacks):
        extra = sorted(attack.ports - set(entry["target_ports"]))
        if extra:
            raise KnowledgeError(f"{where} attack #{i + 1}: ports {extra} are not in target_ports; add them there")
    if schema >= 2 and not (infects or attacks or entry.get("targets")):
        raise KnowledgeError(f"{where}: say what it targets: attacks = [{{ trait = ..., ports = [...] }}], "
                             "targets (device ids) or infects (categories)")
    if (schema < 2 and not infects) or bad:
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
                   active=bool(entry.get("active", False)),
                   attacks=attacks)


def _attack(entry: Any, where: str) -> Attack:
    if not isinstance(entry, dict):
        raise KnowledgeError(f"{where}: an attack is a table, e.g. {{ trait = \"busybox\", ports = [23] }}")
    for key, value in entry.items():
        if key not in _ATTACK_KEYS:
            raise KnowledgeError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(_ATTACK_KEYS))}")
        if not isinstance(value, _ATTACK_KEYS[key]):
            raise KnowledgeError(f"{where}: {key} must be a {_ATTACK_KEYS[key].__name__}")
    kinds = [k for k in ("trait", "vendor", "device") if k in entry]
    if len(kinds) != 1:
        raise KnowledgeError(f"{where}: name exactly one of trait, vendor or device")
    if "ports" not in entry:
        raise KnowledgeError(f"{where}: missing required key 'ports' (the TCP ports it attacks there)")
    return Attack(kinds[0], entry[kinds[0]], _ports(entry["ports"], "ports", where), entry.get("why", ""))


def _content_version(devices: Sequence[DeviceModel], malware: Sequence[Malware]) -> str:
    canon = {
        "devices": sorted([d.id, d.category, sorted(d.ports), list(d.keywords), sorted(d.signature_ports)]
                          + ([[[r.on, r.match, r.weight, r.model] for r in d.rules], sorted(d.traits),
                              d.generic, d.vendor] if (d.rules or d.traits or d.generic) else [])
                          for d in devices),
        "malware": sorted([m.id, sorted(m.infects), sorted(m.targets), sorted(m.target_ports),
                           sorted(m.listen_ports), sorted(m.c2_ports)] + ([True] if m.active else [])
                          + ([[a.kind, a.value, sorted(a.ports)] for a in m.attacks] if m.attacks else [])
                          for m in malware),
    }
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
