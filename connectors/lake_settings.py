"""The ``[lake]`` configuration section: where the Parquet lake lives and how its files are sized.

```toml
[lake]
root = ".scanflow/lake"      # relative paths are against the checkout, like infra.state_dir
target_file_mb = 128         # a finished file is cut at about this size; compaction merges up to it
flush_interval_s = 300.0     # longest time written data stays invisible (buffered) in a live writer
compression = "zstd"         # zstd | snappy | gzip | none
row_group_rows = 131072      # rows per Parquet row group (DuckDB parallelises over row groups)
max_open_files = 64          # partitions a writer keeps open at once (oldest finalized first)
```

Environment: ``SCANFLOW_LAKE_ROOT`` etc.; CLI: ``--set lake.root=...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scanflow.config import ConfigError, resolve_path

COMPRESSIONS = ("zstd", "snappy", "gzip", "none")


@dataclass(frozen=True)
class LakeSettings:
    """Where the Parquet lake is and how its files are cut (see the module docstring)."""

    root: str = ".scanflow/lake"
    target_file_mb: float = 128.0
    flush_interval_s: float = 300.0
    compression: str = "zstd"
    row_group_rows: int = 131_072
    max_open_files: int = 64

    def validate(self) -> None:
        """Raise :class:`scanflow.config.ConfigError` naming the key and the fix."""
        if not self.root.strip():
            raise ConfigError("lake.root: empty; give a directory, e.g. .scanflow/lake")
        if not 0.01 <= self.target_file_mb <= 4096:
            raise ConfigError(f"lake.target_file_mb: {self.target_file_mb} is outside 0.01..4096; "
                              "64-512 MB suits DuckDB")
        if self.flush_interval_s <= 0:
            raise ConfigError(f"lake.flush_interval_s: must be > 0 seconds, got {self.flush_interval_s}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"lake.compression: {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if not 1024 <= self.row_group_rows <= 16_777_216:
            raise ConfigError(f"lake.row_group_rows: {self.row_group_rows} is outside 1024..16777216")
        if not 1 <= self.max_open_files <= 4096:
            raise ConfigError(f"lake.max_open_files: {self.max_open_files} is outside 1..4096")

    def root_path(self) -> Path:
        """The lake root as an absolute path."""
        return resolve_path(self.root)

    @property
    def target_file_bytes(self) -> int:
        """:attr:`target_file_mb` in bytes."""
        return int(self.target_file_mb * 1024 * 1024)


def lake_settings(settings) -> LakeSettings:
    """The ``[lake]`` section of a :class:`scanflow.config.Settings`, or the defaults (validated)
    while the section is not wired into ``Settings`` yet."""
    section = getattr(settings, "lake", None) if settings is not None else None
    section = section if isinstance(section, LakeSettings) else LakeSettings()
    section.validate()
    return section
