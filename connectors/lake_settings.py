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

from scanflow.config import LAKE_COMPRESSIONS as COMPRESSIONS, LakeSettings

__all__ = ["COMPRESSIONS", "LakeSettings", "lake_settings"]


def lake_settings(settings) -> LakeSettings:
    """The ``[lake]`` section of a :class:`scanflow.config.Settings`, or the defaults (validated)
    while the section is not wired into ``Settings`` yet."""
    section = getattr(settings, "lake", None) if settings is not None else None
    section = section if isinstance(section, LakeSettings) else LakeSettings()
    section.validate()
    return section
