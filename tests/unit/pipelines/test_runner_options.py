"""Pipeline options that matter for long-running jobs (pipelines/runners.py)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PortableOptions, StandardOptions

from pipelines.runners import LIVE_JOB_STREAM_TIMEOUT_S, pipeline_options
from scanflow.config import BeamSettings


def _prism(tmp_path) -> BeamSettings:
    binary = tmp_path / "prism"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return BeamSettings(prism_location=str(binary))


def test_live_jobs_do_not_inherit_the_five_minute_stream_deadline(tmp_path):
    options = pipeline_options(_prism(tmp_path), streaming=True)
    assert options.view_as(StandardOptions).streaming
    # Beam's default (300 s) is the deadline of the job's state stream: a live job would end at 5 min.
    assert options.view_as(PortableOptions).job_server_timeout == LIVE_JOB_STREAM_TIMEOUT_S
    assert LIVE_JOB_STREAM_TIMEOUT_S >= 365 * 24 * 3600


def test_bounded_jobs_keep_the_default_timeout(tmp_path):
    options = pipeline_options(_prism(tmp_path), streaming=False)
    assert options.view_as(PortableOptions).job_server_timeout == 300
