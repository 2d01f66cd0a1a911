"""Port sets: named, versioned sets of TCP ports with their provenance, and their derivation from a
full-port scan with DuckDB.

From a full-port scan result (rows of ``ip, port`` for every open port found) the derivation
(:func:`derive_port_sets`) follows the paper:

1. drop IPs with ``honeypot_min_ports`` (100) or more open ports: honeypots and the like, not IoT;
2. drop ports answered by fewer than ``min_ip_share`` (0.001 %) of the responsive IPs (counted
   before step 1, as the paper's 328,240) -> the **standard port set**;
3. rank the standard ports by the number of (remaining) IPs answering them -> the **response ranking**;
4. **silent set**: the top-k ranked ports, k the smallest giving a device detection rate (share of the
   IPs with an open standard port that have one among the top k) of ``silent_target`` (95 %);
5. **unknown-device set**: device ports + malware ports + the top-k ranked ports, k the smallest
   giving a port detection rate (Jaccard of the (ip, port) responses against the standard set's) of
   ``unknown_target`` (97 %).

DuckDB does the heavy lifting (it streams Parquet and aggregates ~10^8 rows in seconds); only
per-port and per-rank counts (at most 65,535 rows) come back to Python. DuckDB is imported only when
a derivation runs: it is a local compute engine, opened in memory, and never touches the network.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

#: The schemas carry a port set inline only up to this many ports; bigger sets go by name.
MAX_INLINE_PORTS = 64


@dataclass(frozen=True)
class Provenance:
    """Where a port set came from: the input, the method and its cuts and targets, the date, and
    summary figures of the derivation (``stats``)."""

    source: str
    method: str
    created: str
    params: tuple[tuple[str, Any], ...] = ()
    stats: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"source": self.source, "method": self.method, "created": self.created,
                "params": dict(self.params), "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Provenance":
        """Inverse of :meth:`as_dict`."""
        return cls(source=data["source"], method=data["method"], created=data["created"],
                   params=tuple(sorted(data.get("params", {}).items())),
                   stats=tuple(sorted(data.get("stats", {}).items())))


@dataclass(frozen=True)
class PortSet:
    """A set of TCP ports. Published sets have a ``name`` and an integer ``version`` (the pair is
    what commands refer to); inline sets (``name`` None) travel as their ports and carry a ``label``
    saying what they are (e.g. ``device:hikvision-ipc``). Equality is on name, version and ports."""

    name: str | None
    version: int | None
    ports: frozenset[int]
    label: str = field(default="", compare=False)
    provenance: Provenance | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.ports, frozenset):
            object.__setattr__(self, "ports", frozenset(self.ports))
        bad = [p for p in self.ports if not isinstance(p, int) or not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"port set {self.ref}: ports must be 1..65535, got {sorted(bad)[:5]}")
        if (self.name is None) != (self.version is None):
            raise ValueError("a port set has both a name and a version, or neither (inline)")
        if self.version is not None and self.version < 1:
            raise ValueError(f"port set {self.name}: version must be >= 1, got {self.version}")

    @classmethod
    def named(cls, name: str, version: int, ports: Iterable[int], provenance: Provenance | None = None) -> "PortSet":
        """A published set: referred to as ``name`` version ``version``."""
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"port set name {name!r} must be non-empty without spaces")
        return cls(name, version, frozenset(ports), name, provenance)

    @classmethod
    def inline(cls, ports: Iterable[int], label: str = "") -> "PortSet":
        """An unnamed set sent with its ports (at most :data:`MAX_INLINE_PORTS` in a command)."""
        return cls(None, None, frozenset(ports), label)

    @property
    def is_inline(self) -> bool:
        """True for an unnamed set."""
        return self.name is None

    @property
    def ref(self) -> str:
        """``name@vN`` for a published set, ``inline:<digest>`` for an inline one (content-based, so
        an inline set rebuilt from a command or observation record has the same ref)."""
        if self.name is not None:
            return f"{self.name}@v{self.version}"
        return f"inline:{self.digest}"

    @cached_property
    def sorted(self) -> tuple[int, ...]:
        """The ports ascending."""
        return tuple(sorted(self.ports))

    @cached_property
    def digest(self) -> str:
        """16 hex digits of SHA-256 over the sorted ports: the content, whatever the name."""
        return hashlib.sha256(",".join(map(str, self.sorted)).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.ports)

    def __contains__(self, port: object) -> bool:
        return port in self.ports

    def __iter__(self):
        return iter(self.sorted)

    def to_record(self) -> dict[str, Any]:
        """The Avro ``PortSet`` record: name and version, or the ports inline."""
        if self.name is not None:
            return {"name": self.name, "version": self.version, "ports": []}
        if len(self.ports) > MAX_INLINE_PORTS:
            raise ValueError(f"port set {self.ref} has {len(self.ports)} ports; more than "
                             f"{MAX_INLINE_PORTS} cannot go inline, publish it with a name")
        return {"name": None, "version": None, "ports": list(self.sorted)}

    @classmethod
    def from_record(cls, record: dict[str, Any], published: Iterable["PortSet"] = ()) -> "PortSet":
        """The set an Avro ``PortSet`` record refers to: one of ``published`` by name and version,
        or the inline ports. ``KeyError`` names a reference that is not among ``published``."""
        name, version = record.get("name"), record.get("version")
        if name is None:
            return cls.inline(record.get("ports") or ())
        for ps in published:
            if ps.name == name and ps.version == version:
                return ps
        raise KeyError(f"port set {name}@v{version} is not published here; load that version")

    def to_json(self) -> str:
        """The published form: name, version, digest, ports and provenance, as JSON."""
        return json.dumps({"name": self.name, "version": self.version, "label": self.label,
                           "digest": self.digest, "size": len(self.ports), "ports": list(self.sorted),
                           "provenance": self.provenance.as_dict() if self.provenance else None},
                          indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PortSet":
        """Inverse of :meth:`to_json`; checks the digest against the ports."""
        data = json.loads(text)
        prov = Provenance.from_dict(data["provenance"]) if data.get("provenance") else None
        ps = cls(data.get("name"), data.get("version"), frozenset(data["ports"]), data.get("label", ""), prov)
        if data.get("digest") and data["digest"] != ps.digest:
            raise ValueError(f"port set {ps.ref}: digest {data['digest']} does not match its ports "
                             f"({ps.digest}); the file was edited or damaged")
        return ps

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path``."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "PortSet":
        """Read a set written by :meth:`write`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Derivation:
    """Everything :func:`derive_port_sets` computed.

    ``ranking`` is ``((port, ips), ...)`` best first (ties by port number). ``ddr_curve[k-1]`` is the
    device detection rate of the top ``k`` ranked ports; ``pdr_curve[k]`` the port detection rate of
    the base (device + malware ports) plus the top ``k`` ranked ports, so ``pdr_curve[0]`` is the base
    alone.
    """

    standard: PortSet
    silent: PortSet
    unknown: PortSet
    ranking: tuple[tuple[int, int], ...]
    ddr_curve: tuple[float, ...]
    pdr_curve: tuple[float, ...]
    responsive_ips: int
    honeypot_ips: int
    kept_ips: int
    threshold_ips: float
    rows: int
    #: Ports predicted from ports (:class:`scanflow.predict.PortPredictor`), when learned from the same scan.
    predictor: Any = None

    def silent_size_for(self, target: float) -> int:
        """Smallest k whose top-k device detection rate reaches ``target`` (len(ranking) if none)."""
        return _first_reaching(self.ddr_curve, target, offset=1, default=len(self.ranking))

    def unknown_top_for(self, target: float) -> int:
        """Smallest k whose base + top-k port detection rate reaches ``target``."""
        return _first_reaching(self.pdr_curve, target, offset=0, default=len(self.ranking))


#: The file name of a derivation's :class:`Ranking` beside its port sets (``scanflow portsets derive``).
RANKING_FILE = "ranking.json"


@dataclass(frozen=True)
class Ranking:
    """The response ranking a derivation cut its sets from, as published beside them: ``ports``
    ``((port, ips), ...)`` best first, the device detection curve ``ddr_curve`` (``ddr_curve[k-1]``:
    top ``k``), and the digest of the standard set it ranks (so a ranking is never paired with the
    sets of another derivation). The adaptive policy cuts its light set from it."""

    ports: tuple[tuple[int, int], ...]
    ddr_curve: tuple[float, ...]
    standard_digest: str

    @classmethod
    def of(cls, derivation: "Derivation") -> "Ranking":
        """The ranking of a :class:`Derivation`."""
        return cls(tuple(derivation.ranking), tuple(derivation.ddr_curve), derivation.standard.digest)

    def to_json(self) -> str:
        return json.dumps({"standard_digest": self.standard_digest, "size": len(self.ports),
                           "ranking": [list(pc) for pc in self.ports], "ddr_curve": list(self.ddr_curve)})

    @classmethod
    def from_json(cls, text: str) -> "Ranking":
        """Inverse of :meth:`to_json`; ``ValueError`` when the curve does not match the ranking."""
        data = json.loads(text)
        ports = tuple((int(p), int(n)) for p, n in data["ranking"])
        curve = tuple(float(x) for x in data["ddr_curve"])
        if len(curve) != len(ports):
            raise ValueError(f"ranking of {len(ports)} ports with a detection curve of {len(curve)} points; "
                             "the file was edited or damaged: derive the sets again")
        return cls(ports, curve, str(data["standard_digest"]))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Ranking":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def write_derivation(derivation: "Derivation", directory: str | Path) -> list[Path]:
    """Write a derivation's sets (``standard.json``, ``silent.json``, ``unknown.json``) and its
    :class:`Ranking` (``ranking.json``) into ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [getattr(derivation, role).write(directory / f"{role}.json") for role in ("standard", "silent", "unknown")]
    paths.append(Ranking.of(derivation).write(directory / RANKING_FILE))
    return paths


def _first_reaching(curve: Sequence[float], target: float, offset: int, default: int) -> int:
    for i, rate in enumerate(curve):
        if rate >= target - 1e-12:
            return i + offset
    return default


def derive_port_sets(source: Any, *, device_ports: Iterable[int] = (), malware_ports: Iterable[int] = (),
                     honeypot_min_ports: int = 100, min_ip_share: float | str = "0.00001",
                     silent_target: float = 0.95, unknown_target: float = 0.97,
                     version: int = 1, created: str | _dt.date | None = None, source_label: str | None = None,
                     kb_version: str | None = None, threads: int | None = None) -> Derivation:
    """Derive the standard, silent and unknown-device port sets from a full-port scan.

    ``source`` is a Parquet path or glob, a list of them, or a pyarrow Table, with columns ``ip``
    (any type) and ``port`` (integer); duplicate rows are counted once. ``min_ip_share`` is a
    fraction (0.001 % = ``"0.00001"``), compared exactly (a decimal string avoids binary rounding
    at the threshold). ``created`` defaults to today's UTC date.
    """
    import duckdb  # deferred: only derivations need it, and it is heavy to import

    if honeypot_min_ports < 1:
        raise ValueError(f"honeypot_min_ports must be >= 1, got {honeypot_min_ports}")
    share = Fraction(str(min_ip_share))
    if not 0 <= share < 1:
        raise ValueError(f"min_ip_share must be in [0, 1), got {min_ip_share}")
    for name, target in (("silent_target", silent_target), ("unknown_target", unknown_target)):
        if not 0 < target <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {target}")
    created_s = (created.isoformat() if isinstance(created, _dt.date)
                 else created or _dt.datetime.now(_dt.timezone.utc).date().isoformat())

    con = duckdb.connect(":memory:")
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        relation, label = _open_source(con, source)
        if relation is not None:
            con.register("scan_raw", relation)
        from_clause = "scan_raw" if relation is not None else _parquet_scan(source)
        con.execute(f"CREATE TEMP TABLE scan AS SELECT DISTINCT ip, CAST(port AS INTEGER) AS port "
                    f"FROM {from_clause} WHERE port BETWEEN 1 AND 65535")
        rows = con.execute("SELECT count(*) FROM scan").fetchone()[0]
        con.execute("CREATE TEMP TABLE ip_ports AS SELECT ip, count(*) AS n FROM scan GROUP BY ip")
        responsive, honeypots = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE n >= ?) FROM ip_ports", [honeypot_min_ports]).fetchone()
        con.execute("CREATE TEMP TABLE clean AS SELECT s.ip, s.port FROM scan s "
                    "JOIN ip_ports USING (ip) WHERE ip_ports.n < ?", [honeypot_min_ports])
        port_counts = con.execute("SELECT port, count(*) AS ips FROM clean GROUP BY port").fetchall()
        # keep a port when ips >= share * responsive, in integers: ips * den >= num * responsive
        keep = [(p, c) for p, c in port_counts
                if c * share.denominator >= share.numerator * responsive]
        ranking = tuple(sorted(keep, key=lambda pc: (-pc[1], pc[0])))
        con.execute("CREATE TEMP TABLE ranked AS SELECT unnest(?::INTEGER[]) AS port, "
                    "unnest(?::INTEGER[]) AS rnk",
                    [[p for p, _ in ranking], list(range(1, len(ranking) + 1))])
        # device detection: an IP is found by the top k ports when its best-ranked open port is <= k
        best = dict(con.execute(
            "SELECT best, count(*) FROM (SELECT ip, min(rnk) AS best FROM clean JOIN ranked USING (port) "
            "GROUP BY ip) GROUP BY best").fetchall())
        kept_ips = con.execute("SELECT count(*) FROM ip_ports WHERE n < ?", [honeypot_min_ports]).fetchone()[0]
    finally:
        con.close()

    found_ips = sum(best.values())
    ddr, acc = [], 0
    for k in range(1, len(ranking) + 1):
        acc += best.get(k, 0)
        ddr.append(acc / found_ips if found_ips else 1.0)

    counts = dict(port_counts)
    standard_ports = frozenset(p for p, _ in ranking)
    base = frozenset(device_ports) | frozenset(malware_ports)
    pdr = _pdr_curve(counts, standard_ports, base, ranking)

    derivation_stats = (("rows", rows), ("responsive_ips", responsive), ("honeypot_ips", honeypots),
                        ("kept_ips", kept_ips), ("threshold_ips", float(share * responsive)))
    src = source_label or label

    def provenance(method: str, params: dict[str, Any], extra: dict[str, Any]) -> Provenance:
        base_params = {"honeypot_min_ports": honeypot_min_ports, "min_ip_share": str(min_ip_share)}
        if kb_version:
            base_params["kb_version"] = kb_version
        return Provenance(src, method, created_s, tuple(sorted({**base_params, **params}.items())),
                          tuple(sorted({**dict(derivation_stats), **extra}.items())))

    standard = PortSet.named("standard", version, standard_ports,
                             provenance("standard: full-port scan minus honeypots and rare ports", {}, {}))
    k_silent = _first_reaching(ddr, silent_target, offset=1, default=len(ranking))
    silent = PortSet.named("silent", version, (p for p, _ in ranking[:k_silent]), provenance(
        "silent: top-k of the response ranking by device detection rate",
        {"silent_target": silent_target}, {"k": k_silent, "ddr": ddr[k_silent - 1] if ddr else 1.0}))
    k_unknown = _first_reaching(pdr, unknown_target, offset=0, default=len(ranking))
    unknown = PortSet.named("unknown", version, base | {p for p, _ in ranking[:k_unknown]}, provenance(
        "unknown: device + malware ports + top-k of the response ranking by port detection rate",
        {"unknown_target": unknown_target, "base_ports": len(base)},
        {"k": k_unknown, "pdr": pdr[k_unknown] if k_unknown < len(pdr) else pdr[-1]}))
    return Derivation(standard, silent, unknown, ranking, tuple(ddr), tuple(pdr), responsive, honeypots,
                      kept_ips, float(share * responsive), rows)


def _pdr_curve(counts: dict[int, int], standard: frozenset[int], base: frozenset[int],
               ranking: Sequence[tuple[int, int]]) -> list[float]:
    """Jaccard of (ip, port) responses, efficient set E vs standard set S, for E = base + top k.

    Rows are distinct (ip, port), so |Ps ∩ Pe| and |Ps ∪ Pe| are sums of per-port counts over
    S ∩ E and S ∪ E: the whole curve is one pass over the ranking.
    """
    in_std = sum(counts.get(p, 0) for p in standard)
    inter = sum(counts.get(p, 0) for p in base if p in standard)
    union = in_std + sum(counts.get(p, 0) for p in base if p not in standard)
    curve = [inter / union if union else 1.0]
    for port, ips in ranking:
        if port not in base:
            inter += ips
        curve.append(inter / union if union else 1.0)
    return curve


def _open_source(con: Any, source: Any) -> tuple[Any, str]:
    """(relation to register or None for Parquet paths, label for provenance)."""
    if isinstance(source, (str, Path)):
        return None, str(source)
    if isinstance(source, (list, tuple)) and all(isinstance(s, (str, Path)) for s in source):
        return None, ",".join(str(s) for s in source)
    if hasattr(source, "num_rows") and hasattr(source, "schema"):  # pyarrow Table / RecordBatch
        return source, f"arrow table ({source.num_rows} rows)"
    raise TypeError("source must be a Parquet path/glob, a list of them, or a pyarrow Table")


def _parquet_scan(source: Any) -> str:
    paths = [str(source)] if isinstance(source, (str, Path)) else [str(s) for s in source]
    quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{quoted}])"
