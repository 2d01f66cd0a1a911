"""The progress line of ``scanflow run``: virtual days so far, records in the run's events and
commands topics, rows in the lake's finished Parquet files; rewritten in place on a terminal, one
line per sample in a log.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scanflow.loop.spec import LoopSpec
from scanflow.loop.topics import RunTopics

TABLES = ("events", "scans", "observations", "decisions")


@dataclass
class Progress:
    """What the loop has done so far (one progress line)."""

    virtual_days: float = 0.0
    events: int = 0
    commands: int = 0
    lake_rows: int = 0

    def line(self, days: float) -> str:
        return (f"day {self.virtual_days:5.2f}/{days:g}  events {self.events:>11,}  "
                f"commands {self.commands:>9,}  lake rows {self.lake_rows:>10,}")


class ProgressMeter:
    """Samples and shows the :class:`Progress` of one run."""

    def __init__(self, spec: LoopSpec, topics: RunTopics, echo: Callable[[str], None], tty: bool):
        self.spec, self.topics, self.echo, self.tty = spec, topics, echo, tty
        self._lake_cache: dict[Path, int] = {}

    def lake_rows(self) -> int:
        """Rows in the lake's finished Parquet files (footers only, each file read once)."""
        import pyarrow.parquet as pq

        total = 0
        for table in TABLES:
            for path in (self.spec.lake_dir / table).glob("date=*/hour=*/*.parquet"):
                if path not in self._lake_cache:
                    try:
                        self._lake_cache[path] = pq.read_metadata(path).num_rows
                    except Exception:  # noqa: BLE001 - a file being written; count it next time
                        continue
                total += self._lake_cache[path]
        return total

    def sample(self, started: float) -> Progress:
        return Progress(virtual_days=(time.time() - started) / self.spec.day_seconds,
                        events=self.topics.records(self.topics.names["events"]),
                        commands=self.topics.records(self.topics.names["commands"]), lake_rows=self.lake_rows())

    def show(self, progress: Progress, final: bool = False) -> None:
        line = progress.line(self.spec.days)
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            self.echo(line)
