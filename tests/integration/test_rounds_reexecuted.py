"""Round assembly when a scan is executed twice: its agent died before acknowledging the command and
another agent ran it again, so the same scan id comes with two ScanDones that end at different
times. Every run of the stage (on Prism: the FnApiRunner has no TestStream) must close the round the same way, whichever of them it saw and in
whatever order: at the earliest ScanDone (the first execution)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from scanflow.lifecycle.rounds import Done, Event
from scanflow.lifecycle.records import micros
from pipelines.rounds import AssembleRounds

T0 = 1_700_000_000.0
IP = "198.18.0.7"
BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"


def _ev(t):
    return TimestampedValue(Event("scan-1", IP, 22, BANNER, "ssh", micros(t), "agent-a"), t)


def _done(t, agent):
    return TimestampedValue(Done("scan-1", IP, agent, "cmd-1", "EFFICIENT", micros(T0), micros(t), None, 1,
                                 "COMPLETE"), t)


def _check_round_ends(stream, prism_options, assert_ran_on_prism, expected) -> None:
    """Run round assembly over ``stream`` on Prism; its rounds must be ``expected`` (ip, end, agent)."""
    options = prism_options()
    p = beam.Pipeline(options=options)
    rounds = p | stream | AssembleRounds(round_timeout_s=600, dedupe_horizon_s=3600)
    assert_that(rounds | beam.Map(lambda kv: (kv[0], kv[1].ended_us, kv[1].agent_id)), equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    assert_ran_on_prism(result, options)


def test_the_earliest_scandone_closes_the_round_whatever_the_order(prism_options, assert_ran_on_prism):
    for first, second in ((T0 + 30, T0 + 35), (T0 + 35, T0 + 30)):
        stream = (EventStream().advance_watermark_to(T0)
                  .add_elements([_ev(T0 + 1)])
                  .add_elements([_done(first, f"agent-{first - T0:.0f}")])
                  .add_elements([_done(second, f"agent-{second - T0:.0f}")])
                  .advance_watermark_to(T0 + 100).advance_watermark_to_infinity())
        _check_round_ends(stream, prism_options, assert_ran_on_prism, [(IP, micros(T0 + 30), "agent-30")])


def test_a_second_execution_after_the_round_closed_adds_nothing(prism_options, assert_ran_on_prism):
    stream = (EventStream().advance_watermark_to(T0)
              .add_elements([_ev(T0 + 1), _done(T0 + 30, "agent-a")])
              .advance_watermark_to(T0 + 60)
              .add_elements([_ev(T0 + 61), _done(T0 + 70, "agent-b")])
              .advance_watermark_to(T0 + 200).advance_watermark_to_infinity())
    _check_round_ends(stream, prism_options, assert_ran_on_prism, [(IP, micros(T0 + 30), "agent-a")])
