"""After an outage, the live per-IP stage issues one command per IP, not one expired command per
missed cycle (``pipeline.catch_up``), driven by ``TestStream`` on the session's Prism runner.

One IP answered five days ago; its next scan (12 h later) and every retry since have passed while
nothing ran. Without catch-up the timers replay the outage: a command at each missed next scan
(expired before any agent could take it) and a watchdog decision after each. With catch-up the first
missed scan moves to now (the wall clock) and the one command is issued then.
"""

from __future__ import annotations

import json
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.transforms.window import TimestampedValue

from scanflow.lifecycle.rounds import Done, Event
from pipelines.policy_setup import build_policy
from scanflow.lifecycle.records import micros
from pipelines.scheduler import Scheduler
from pipelines.settings import PipelineSettings
from scanflow.config import Settings
from scanflow.policy import HOUR

IP = "192.0.2.7"
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"
SETTINGS = PipelineSettings(round_timeout_s=600, command_ttl_s=3600, dedupe_horizon_s=2 * HOUR, rewind_s=3600)
POLICY = build_policy(Settings(), SETTINGS, name="paper")
SILENT = POLICY.port_sets.silent


class _Append(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, element):
        with open(self._path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(element[1]["not_before"]) + "\n")


def _commands(prism_options, assert_ran_on_prism, tmp_path, catch_up: bool) -> tuple[list[int], float, float]:
    start = float(int(time.time()))         # TestStream watermarks are whole milliseconds
    t0 = start - 5 * 24 * HOUR
    stream = (EventStream()
              .advance_watermark_to(t0)
              .add_elements([TimestampedValue(Event("s1", IP, 80, HIK, "http", micros(t0 + 1), "agent-1"), t0 + 1),
                             TimestampedValue(Done("s1", IP, "agent-1", None, "EFFICIENT", micros(t0), micros(t0 + 30),
                                                   (SILENT.name, SILENT.version, ()), 0, "COMPLETE", 1), t0 + 30)])
              .advance_watermark_to(start + 2 * HOUR))
    options = prism_options()
    p = beam.Pipeline(options=options)
    out = (p | "Stream" >> stream
           | "Schedule" >> Scheduler(POLICY, SETTINGS, horizon=start + 3 * HOUR, catch_up=catch_up))
    path = tmp_path / f"commands-{catch_up}"
    _ = out.commands | "Write" >> beam.ParDo(_Append(str(path)))
    result = p.run()
    result.wait_until_finish()
    assert_ran_on_prism(result, options)
    got = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sorted(got), start, time.time()


@pytest.mark.parametrize("catch_up", [False, True], ids=["replaying-the-outage", "catch-up"])
def test_a_scheduler_back_from_an_outage_issues_no_expired_commands(prism_options, assert_ran_on_prism, tmp_path,
                                                                    catch_up):
    commands, start, end = _commands(prism_options, assert_ran_on_prism, tmp_path, catch_up)
    expired = [c for c in commands if c + micros(SETTINGS.command_ttl_s) < micros(start)]
    if not catch_up:
        # one per missed cycle (next scan 12 h after the answer, then a retry every 12 h + the watchdog)
        assert len(expired) >= 4, commands
        return
    assert expired == []
    # the first command is the missed scan, moved to the wall clock of the run
    assert commands and micros(start) <= commands[0] <= micros(end)
