"""``scanflow pipeline`` arguments and settings: mistakes stop with one line saying the fix."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipelines.settings import PipelineSettings, pipeline_settings
from scanflow.cli import main
from scanflow.config import ConfigError, Settings


def _run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def test_pipeline_commands_are_registered_with_help():
    result = _run("pipeline", "--help")
    assert result.exit_code == 0 and "run" in result.output and "replay" in result.output
    run_help = _run("pipeline", "run", "--help").output
    assert "--runner" in run_help and "--duration" in run_help and "--job-endpoint" in run_help


def test_the_live_scheduler_refuses_the_bounded_only_runner():
    result = _run("pipeline", "run", env={"SCANFLOW_BEAM_RUNNER": "fnapi"})
    assert result.exit_code == 2 and "bounded pipelines only" in result.output


def test_replay_window_must_be_a_time_range():
    result = _run("pipeline", "replay", "--since", "2024-01-02T00:00:00Z", "--until", "2024-01-01")
    assert result.exit_code == 2 and "--until must be after --since" in result.output
    result = _run("pipeline", "replay", "--since", "yesterday", "--until", "2024-01-01")
    assert result.exit_code == 2 and "ISO 8601" in result.output


@pytest.mark.parametrize("changes, message", [
    ({"sweep_prefix": 40}, "outside 8..32"),
    ({"sweep_ranges": ("192.0.2.1/24",)}, "zero host bits"),
    ({"sweep_ranges": ("2001:db8::/32",)}, "IPv6"),
    ({"sweep_ranges": ("192.0.2.0/28",), "sweep_prefix": 24}, "smaller than one sweep block"),
    ({"round_timeout_s": 0}, "must be > 0"),
    ({"round_timeout_s": 7200, "rewind_s": 3600}, "would be lost"),
    ({"recent_scans": 0}, "outside 1..16"),
    ({"silent_set": "no/such/file.json"}, "does not exist"),
    ({"group_id": ""}, "consumer group"),
])
def test_settings_say_what_is_wrong(changes, message):
    with pytest.raises(ConfigError, match=message):
        PipelineSettings(**changes).validate()


def test_defaults_are_valid_and_used_until_the_section_exists():
    assert pipeline_settings(Settings()) == PipelineSettings()
    assert PipelineSettings(sweep_ranges=("198.51.100.0/24",)).validate().sweep_networks()[0].num_addresses == 256
