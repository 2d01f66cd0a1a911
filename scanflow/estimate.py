"""Device estimation: from a host's open ports and banners to a device model (or none), a confidence
and the evidence behind it, and from the model to the ports worth scanning next.

Scoring (documented in ``docs/POLICY.md``). For every model that has at least one keyword in the
banners or one of its signature ports open:

    score = sum(1 / df(keyword) for each matched keyword)            df: models sharing that keyword
          + sum(0.4 / df(port) for each open signature port)
          + 0.25 * coverage                    coverage: share of the host's open ports the model uses

    confidence = score / (score + 0.5) * (1 - 0.5 * runner_up_score / score)

so one keyword unique to a model that explains all open ports gives 0.71, a signature port alone at
most 0.57, and a tie between two models halves the confidence. The best model is returned when its
confidence reaches ``min_confidence`` (0.5 by default), else the estimate has no model.

Banners are untrusted bytes. They are never decoded for matching: each banner is cut to
``max_banner_bytes``, ASCII-lower-cased and split into words by one linear-time regular expression;
at most ``max_banners`` banners are looked at. Keywords are found by intersecting the banner's words
with an index of keyword first words, so the work per host does not grow with the knowledge base.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from scanflow.banner_fields import banner_fields
from scanflow.fingerprint import strip_telnet
from scanflow.knowledge import KnowledgeBase, keyword_words
from scanflow.portsets import PortSet

_WORDS = re.compile(rb"[a-z]+|[0-9]+")
# The same words as _WORDS, found by C-level byte translation (several times faster than a regex):
# letters lower-cased with everything else blanked, and digits with everything else blanked.
_LETTERS = bytes(c | 0x20 if 65 <= c <= 90 or 97 <= c <= 122 else 32 for c in range(256))
_DIGITS = bytes(c if 48 <= c <= 57 else 32 for c in range(256))

KEYWORD = "keyword"
RULE = "rule"
SIGNATURE_PORT = "signature-port"
COVERAGE = "port-coverage"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One reason behind an estimate: a keyword seen in the banner of ``port``, an open signature
    port, or how many of the host's open ports the model uses; ``weight`` is its share of the score."""

    kind: str
    value: str
    port: int | None
    weight: float


@dataclass(frozen=True, slots=True)
class Estimate:
    """The result of estimation. ``model`` is None when no model reached the confidence threshold;
    ``candidate`` is then the best guess (or None if nothing matched at all). ``ports`` are the ports
    to scan next (the model's and its malware's), empty without a model."""

    model: str | None
    category: str | None
    confidence: float
    evidence: tuple[Evidence, ...]
    ports: PortSet | None
    candidate: str | None = None
    runner_up: str | None = None
    #: The estimated device's vendor and product family (the knowledge entry's name), and the model
    #: the device states in its banners when a rule captured one (extra detail: the port set is the
    #: product family's, keyed by ``model``, the entry id).
    vendor: str | None = None
    family: str | None = None
    stated_model: str | None = None

    @property
    def estimated(self) -> bool:
        """True when a model was estimated."""
        return self.model is not None


NO_ESTIMATE = Estimate(None, None, 0.0, (), None)


class Estimator:
    """Estimates device models with one :class:`~scanflow.knowledge.KnowledgeBase`.

    Immutable after construction except for a bounded memo of per-banner keyword matches (the same
    banners recur across many hosts); picklable, so a Beam DoFn can carry one to its workers.
    """

    def __init__(self, kb: KnowledgeBase, *, min_confidence: float = 0.5, max_banner_bytes: int = 4096,
                 max_banners: int = 64, cache_size: int = 1 << 16):
        if not 0.0 < min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in (0, 1], got {min_confidence}")
        if max_banner_bytes < 1 or max_banners < 1:
            raise ValueError("max_banner_bytes and max_banners must be >= 1")
        self.kb = kb
        self.min_confidence = min_confidence
        self.max_banner_bytes = max_banner_bytes
        self.max_banners = max_banners
        self.cache_size = cache_size
        self._build()

    def _build(self) -> None:
        kb = self.kb
        self._models = kb.devices
        # keyword -> (phrase to look for in the space-joined words, models listing it, weight per model)
        phrases: dict[tuple[bytes, ...], list[int]] = {}
        for mi, device in enumerate(self._models):
            for kw in device.keywords:
                phrases.setdefault(keyword_words(kw), []).append(mi)
        self._kw_text: list[str] = []
        self._kw_phrase: list[bytes] = []
        self._kw_models: list[tuple[int, ...]] = []
        self._kw_weight: list[float] = []
        self._first: dict[bytes, list[int]] = {}
        for words, models in phrases.items():
            ki = len(self._kw_text)
            self._kw_text.append(" ".join(w.decode() for w in words))
            self._kw_phrase.append(b" " + b" ".join(words) + b" ")
            self._kw_models.append(tuple(models))
            self._kw_weight.append(1.0 / len(models))
            self._first.setdefault(words[0], []).append(ki)
        self._first_keys = frozenset(self._first)
        self._digit_firsts = frozenset(w for w in self._first if w.isdigit())
        self._kw_single = [phrase.count(b" ") == 2 for phrase in self._kw_phrase]
        sig: dict[int, list[int]] = {}
        for mi, device in enumerate(self._models):
            for port in device.signature_ports:
                sig.setdefault(port, []).append(mi)
        self._sig = {p: (tuple(ms), 0.4 / len(ms)) for p, ms in sig.items()}
        self._sig_ports = frozenset(self._sig)
        # Banner rules, grouped by the field they look at; "text" rules look at every field.
        self._rules: dict[str, list[tuple[re.Pattern[str], int, float, str, str]]] = {}
        for mi, device in enumerate(self._models):
            for rule in device.rules:
                self._rules.setdefault(rule.on, []).append(
                    (re.compile(rule.match, re.IGNORECASE), mi, rule.weight, rule.match, rule.model))
        self._any_rules = self._rules.pop("text", [])
        # One combined pattern per field finds out with a single search whether any rule of the field
        # can match (most banners match none); only then are the field's rules tried one by one.
        self._field_any = {fld: re.compile("|".join(f"(?:{p.replace('(?P<model>', '(?:')})"
                                                    for _, _, _, p, _ in (*rules, *self._any_rules)),
                                           re.IGNORECASE)
                           for fld, rules in self._rules.items()}
        self._text_any = (re.compile("|".join(f"(?:{p.replace('(?P<model>', '(?:')})"
                                              for _, _, _, p, _ in self._any_rules), re.IGNORECASE)
                          if self._any_rules else None)
        self._value_memo: dict[tuple[str, str], tuple[tuple[int, float, str, str, str], ...]] = {}
        self._generic = [d.generic for d in self._models]
        self._vendor = [d.vendor.lower() for d in self._models]
        self._rule_memo: dict[bytes, tuple[tuple[int, float, str, str, str], ...]] = {}
        self._model_ports = [d.ports for d in self._models]
        self._port_sets = [PortSet.inline(kb.scan_ports(d.id), label=f"device:{d.id}") for d in self._models]
        self._by_id = {d.id: i for i, d in enumerate(self._models)}
        self._memo: dict[bytes, tuple[int, ...]] = {}

    def __getstate__(self) -> dict:
        return {"kb": self.kb, "min_confidence": self.min_confidence,
                "max_banner_bytes": self.max_banner_bytes, "max_banners": self.max_banners,
                "cache_size": self.cache_size}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._build()

    # -- matching -------------------------------------------------------------------------------

    def keywords_in(self, banner: bytes | bytearray | memoryview | str) -> tuple[str, ...]:
        """The knowledge-base keywords found in one banner (normalised word form)."""
        return tuple(self._kw_text[k] for k in self._match(_as_bytes(banner)[: self.max_banner_bytes]))

    def _match(self, data: bytes) -> tuple[int, ...]:
        hit = self._memo.get(data)
        if hit is not None:
            return hit
        key = data
        if data[:1] == b"\xff":
            # A Telnet greeting: match the text after the option negotiation, not the IAC bytes.
            data = strip_telnet(data)
        firsts = self._first_keys.intersection(data.translate(_LETTERS).split())
        if self._digit_firsts:
            firsts = firsts | self._digit_firsts.intersection(data.translate(_DIGITS).split())
        found: list[int] = []
        if firsts:
            text = None  # the banner's words in order, built only when a phrase must be checked
            for first in firsts:
                for ki in self._first[first]:
                    if self._kw_single[ki]:
                        found.append(ki)
                        continue
                    if text is None:
                        text = b" " + b" ".join(_WORDS.findall(data.lower())) + b" "
                    if self._kw_phrase[ki] in text:
                        found.append(ki)
        result = tuple(sorted(found))
        if len(self._memo) >= self.cache_size:
            self._memo.clear()
        self._memo[key] = result
        return result

    def rules_in(self, data: bytes) -> tuple[tuple[int, float, str, str, str], ...]:
        """Rule hits in one banner: ``(model index, weight, field, rule pattern, stated model)``."""
        hit = self._rule_memo.get(data)
        if hit is not None:
            return hit
        found: list[tuple[int, float, str, str, str]] = []
        if self._rules or self._any_rules:
            for fld, value in banner_fields(data, self.max_banner_bytes):
                if value:
                    found.extend(self._rules_on(fld, value))
        result = tuple(found)
        if len(self._rule_memo) >= self.cache_size:
            self._rule_memo.clear()
        self._rule_memo[data] = result
        return result

    def _rules_on(self, fld: str, value: str) -> tuple[tuple[int, float, str, str, str], ...]:
        key = (fld, value)
        hit = self._value_memo.get(key)
        if hit is not None:
            return hit
        found: list[tuple[int, float, str, str, str]] = []
        gate = self._field_any.get(fld, self._text_any)
        if gate is not None and gate.search(value) is not None:
            for regex, mi, weight, pattern, fixed in (*self._rules.get(fld, ()), *self._any_rules):
                m = regex.search(value)
                if m is not None:
                    stated = fixed
                    if "model" in regex.groupindex and m.group("model"):
                        stated = m.group("model").strip()[:64]
                    found.append((mi, weight, fld, pattern, stated))
        result = tuple(found)
        if len(self._value_memo) >= self.cache_size:
            self._value_memo.clear()
        self._value_memo[key] = result
        return result

    # -- estimation -----------------------------------------------------------------------------

    def estimate(self, open_ports: Iterable[int],
                 banners: Mapping[int, bytes] | Iterable[tuple[int, bytes]] = ()) -> Estimate:
        """Estimate the device behind one host from its open TCP ports and ``{port: banner}``
        (a mapping or ``(port, banner)`` pairs).

        Never raises on banner content; ports outside 1..65535 simply match no model.
        """
        # Hot path (called for every responsive host): collect raw hits cheaply, score only when
        # something matched.
        open_set = open_ports if type(open_ports) is frozenset else frozenset(open_ports)
        items = banners.items() if hasattr(banners, "items") else banners
        limit, max_banners, match = self.max_banner_bytes, self.max_banners, self._match
        found: list[tuple[int, int]] = []
        rule_hits: list[tuple[int, int, float, str, str, str]] = []
        rules_in = self.rules_in
        n = 0
        for port, data in items:
            if n >= max_banners:
                break
            n += 1
            if data:
                if type(data) is not bytes:
                    data = _as_bytes(data)
                data = data[:limit]
                for ki in match(data):
                    found.append((ki, port))
                for hit in rules_in(data):
                    rule_hits.append((hit[0], port, *hit[1:]))
        sig_open = self._sig_ports.intersection(open_set)
        if not found and not sig_open and not rule_hits:
            return NO_ESTIMATE
        return self._score(open_set, found, sig_open, rule_hits)

    def _score(self, open_set: frozenset[int], found: list[tuple[int, int]], sig_open,
               rule_hits: list[tuple[int, int, float, str, str, str]] = ()) -> Estimate:
        scores: dict[int, float] = {}
        rhits: dict[int, list[tuple[int, float, str, str, str]]] = {}
        for mi, port, weight, fld, pattern, stated in rule_hits:
            hits = rhits.setdefault(mi, [])
            if all(p != pattern for _, _, _, p, _ in hits):  # a rule counts once per host
                hits.append((port, weight, fld, pattern, stated))
                scores[mi] = scores.get(mi, 0.0) + weight
        kw_hits: dict[int, list[tuple[int, int]]] = {}
        for ki, port in found:
            weight = self._kw_weight[ki]
            for mi in self._kw_models[ki]:
                hits = kw_hits.setdefault(mi, [])
                if all(k != ki for k, _ in hits):  # a keyword counts once per model
                    hits.append((ki, port))
                    scores[mi] = scores.get(mi, 0.0) + weight
        sig_hits: dict[int, list[int]] = {}
        for port in sig_open:
            models, weight = self._sig[port]
            for mi in models:
                sig_hits.setdefault(mi, []).append(port)
                scores[mi] = scores.get(mi, 0.0) + weight
        n_open = len(open_set)
        coverage: dict[int, int] = {}
        for mi in scores:
            covered = len(self._model_ports[mi] & open_set) if n_open else 0
            coverage[mi] = covered
            if n_open:
                scores[mi] += 0.25 * covered / n_open
        # Highest score wins; ties go to the model explaining more open ports, then the
        # smaller port set (more specific), then the id, so the result never depends on dict order.
        # A vendor's product wins over a generic platform (BusyBox, Boa...): generic entries are
        # ranked only when no vendor's product reaches the threshold. The runner-up that lowers the
        # confidence is the best entry of another vendor: two product families of one vendor sharing
        # a keyword still say which vendor it is.
        def rank(candidates):
            return sorted(candidates, key=lambda mi: (-scores[mi], -coverage[mi], len(self._model_ports[mi]),
                                                      self._models[mi].id))

        def judge(ranked):
            best = ranked[0]
            top = scores[best]
            vendor = self._vendor[best]
            others = [mi for mi in ranked[1:] if self._vendor[mi] != vendor or vendor == "various"]
            second = scores[others[0]] if others else 0.0
            return best, top / (top + 0.5) * (1.0 - 0.5 * second / top), (others[0] if others else None)

        specific = rank([mi for mi in scores if not self._generic[mi]])
        generic = rank([mi for mi in scores if self._generic[mi]])
        best, confidence, runner = judge(specific) if specific else judge(generic)
        if specific and confidence < self.min_confidence and generic:
            g_best, g_conf, g_runner = judge(generic)
            if g_conf >= self.min_confidence:
                best, confidence, runner = g_best, g_conf, g_runner
        stated = None
        evidence = [Evidence(RULE, f"{fld} ~ /{pattern}/" + (f" -> {st}" if st else ""), port, weight)
                    for port, weight, fld, pattern, st in sorted(rhits.get(best, ()), key=lambda h: -h[1])]
        for _, _, _, _, st in sorted(rhits.get(best, ()), key=lambda h: -h[1]):
            if st:
                stated = st
                break
        evidence += [Evidence(KEYWORD, self._kw_text[ki], port, self._kw_weight[ki])
                     for ki, port in kw_hits.get(best, ())]
        evidence += [Evidence(SIGNATURE_PORT, str(p), p, self._sig[p][1]) for p in sorted(sig_hits.get(best, ()))]
        if n_open:
            evidence.append(Evidence(COVERAGE, f"{coverage[best]}/{n_open}", None, 0.25 * coverage[best] / n_open))
        device = self._models[best]
        runner_up = self._models[runner].id if runner is not None else None
        if confidence < self.min_confidence:
            return Estimate(None, None, round(confidence, 4), tuple(evidence), None, device.id, runner_up)
        return Estimate(device.id, device.category, round(confidence, 4), tuple(evidence),
                        self._port_sets[best], device.id, runner_up, device.vendor, device.name, stated)

    def port_set(self, device_id: str) -> PortSet:
        """The ports to scan on a host estimated as ``device_id`` (model ports and malware ports)."""
        return self._port_sets[self._by_id[device_id]]

    def port_sets(self) -> tuple[PortSet, ...]:
        """Every model's scan port set, in knowledge-base order."""
        return tuple(self._port_sets)


def safe_text(data: bytes | bytearray | memoryview | str, limit: int = 200) -> str:
    """Untrusted bytes as one printable line: UTF-8 where valid, ``\\xNN`` escapes elsewhere, control
    characters escaped (no terminal escape sequences get through), cut to ``limit`` characters.
    A Telnet greeting (bytes starting with an option command) is shown without its option
    negotiation (:func:`scanflow.fingerprint.strip_telnet`); ``hex(banner)`` keeps the raw bytes."""
    if not isinstance(data, str):
        data = strip_telnet(data)
    raw = _as_bytes(data)[: limit * 4]
    text = raw.decode("utf-8", "backslashreplace")
    out = []
    for ch in text:
        if ch == "\\" or ch.isprintable():
            out.append(ch)
        elif ch in "\r\n\t":
            out.append({"\r": "\\r", "\n": "\\n", "\t": "\\t"}[ch])
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _as_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "replace")
    return bytes(data)
