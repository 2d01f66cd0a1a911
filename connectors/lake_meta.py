"""What a lake was made by: ``<lake>/_run.json``, written by ``scanflow run`` (and updated with its
progress while it runs), read by the report, the inventory and the dashboard.

A live run compresses time: one virtual day takes ``day_seconds`` wall seconds, and the policy's
durations (back-off intervals, sweep periods) shrink by the same factor. The lake's timestamps are
wall-clock times, so anything that shows a duration or a day from such a lake converts it with
:class:`LakeClock` first. A lake without ``_run.json`` (an evaluation, a real-time deployment, an
archive of a topic) has no compression: :meth:`LakeClock.real` (scale 1).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

META_FILE = "_run.json"
DAY_S = 86_400.0


@dataclass(frozen=True)
class LakeClock:
    """Wall time -> virtual time of one lake. ``scale``: wall seconds per virtual second (1 when
    time is not compressed); ``start``: the wall time (epoch seconds) the virtual clock starts at."""

    scale: float = 1.0
    start: float | None = None

    @classmethod
    def real(cls) -> "LakeClock":
        return cls()

    @property
    def compressed(self) -> bool:
        return self.scale != 1.0

    def duration_s(self, wall_s: float | None) -> float | None:
        """A wall-clock duration as virtual seconds."""
        return None if wall_s is None else wall_s / self.scale

    def day(self, wall_ts: float | None) -> float | None:
        """Virtual days since the start of the run (None without a start or a time)."""
        if wall_ts is None or self.start is None:
            return None
        return (wall_ts - self.start) / self.scale / DAY_S

    def describe(self) -> str:
        """One sentence for a page."""
        if not self.compressed:
            return "Times are real (no clock compression)."
        return (f"The clock of this run is compressed: one virtual day took {self.scale * DAY_S:g} wall seconds "
                f"(x{1 / self.scale:,.0f}). Durations and days are shown in virtual time; timestamps are the "
                "wall-clock times the lake records.")


@dataclass
class RunMeta:
    """The contents of ``_run.json`` (every field optional: an old or foreign lake has fewer)."""

    run_id: str = ""
    backend: str = ""
    policy: str = ""
    ips: int = 0
    days: float = 0.0
    day_seconds: float = 0.0
    start: float | None = None
    agents: int = 0
    networks: list[str] = field(default_factory=list)
    status: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    dashboard: str = ""
    updated_at: float | None = None

    @property
    def clock(self) -> LakeClock:
        if self.day_seconds and self.day_seconds > 0:
            return LakeClock(scale=self.day_seconds / DAY_S, start=self.start)
        return LakeClock(start=self.start)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def read_run_meta(root: str | Path) -> RunMeta | None:
    """The lake's ``_run.json``, or None when it has none (or it does not parse)."""
    path = Path(root) / META_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    known = {k: v for k, v in doc.items() if k in RunMeta.__dataclass_fields__}
    return RunMeta(**known)


def write_run_meta(root: str | Path, meta: RunMeta) -> Path:
    """Write ``_run.json`` atomically (readers see the old or the new file, never half of one)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta.updated_at = _dt.datetime.now(_dt.timezone.utc).timestamp()
    tmp = root / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta.to_json(), indent=1), encoding="utf-8")
    os.replace(tmp, root / META_FILE)
    return root / META_FILE


def lake_clock(root: str | Path) -> LakeClock:
    """The clock of the lake at ``root`` (real time when it has no ``_run.json``)."""
    meta = read_run_meta(root)
    return meta.clock if meta is not None else LakeClock.real()
