"""``[pipeline]`` settings of the Beam scheduler pipeline (docs/PIPELINE.md).

The section lives in :class:`scanflow.config.Settings` as ``pipeline`` (the one typed configuration):
every value comes from the TOML file, ``SCANFLOW_PIPELINE_<KEY>`` or ``--set pipeline.<key>=...``.
"""

from __future__ import annotations

from scanflow.config import PipelineSettings

__all__ = ["PipelineSettings", "pipeline_settings"]


def pipeline_settings(settings) -> PipelineSettings:
    """The ``[pipeline]`` section of ``settings`` (:class:`scanflow.config.Settings`), validated;
    the defaults while the section is not part of ``Settings`` yet."""
    section = getattr(settings, "pipeline", None)
    return (section if isinstance(section, PipelineSettings) else PipelineSettings()).validate()
