"""A sweep's answers are never dropped for arriving late, and do not wait for the sweep's end.

A sweep of a real block runs for minutes to days: the answers of its addresses are spread over all
of it, with pauses longer than the round timeout, and its one ScanDone comes at the end. On Prism
(TestStream): an address that answers early, one that answers after a pause longer than the
timeout, and one that answers twice with a pause, with the block's ScanDone last. Every address gets
its round ``round_timeout_s`` after its own last answer, long before the sweep ends; before the fix the
first timeout closed the whole sweep and the later addresses were dropped as late.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from scanflow.lifecycle.rounds import TIMED_OUT, Done, Event, is_range_scan
from scanflow.lifecycle.records import micros
from pipelines.rounds import AssembleRounds

T0 = 1_700_000_000.0
TIMEOUT = 600.0
SCAN = "cmd-sweep-1/198.18.7.0/24"
EARLY, LATE, TWICE = "198.18.7.10", "198.18.7.200", "198.18.7.41"


def _ev(ip, port, t, banner=None):
    return TimestampedValue(Event(SCAN, ip, port, banner, None, micros(t), "agent-a"), t)


def test_scan_ids_of_ranges_are_recognised():
    assert is_range_scan(SCAN) and is_range_scan("c/10.0.0.0/16#shard1of4") and is_range_scan("c/2001:db8::/64")
    assert not is_range_scan("c/198.18.7.10") and not is_range_scan("sweep-1") and not is_range_scan("c/2001:db8::1")


def test_every_address_of_a_long_sweep_gets_its_round(prism_options, assert_ran_on_prism):
    end = T0 + 10 * TIMEOUT
    stream = (EventStream().advance_watermark_to(T0)
              .add_elements([_ev(EARLY, 80, T0 + 5), _ev(TWICE, 8060, T0 + 6)])
              .advance_watermark_to(T0 + 3 * TIMEOUT)
              .add_elements([_ev(LATE, 22, T0 + 3 * TIMEOUT + 1, b"SSH-2.0-OpenSSH_9.2\r\n")])
              .advance_watermark_to(T0 + 6 * TIMEOUT)
              # The same address again, long after its round closed: it was promoted already.
              .add_elements([_ev(TWICE, 23, T0 + 6 * TIMEOUT + 1)])
              .add_elements([TimestampedValue(Done(SCAN, "198.18.7.0/24", "agent-a", "cmd-sweep-1", "EFFICIENT",
                                                   micros(T0), micros(end), None, 500, "COMPLETE", 4), end)])
              .advance_watermark_to(end + 2 * TIMEOUT).advance_watermark_to_infinity())
    options = prism_options()
    p = beam.Pipeline(options=options)
    rounds = p | stream | AssembleRounds(round_timeout_s=TIMEOUT, dedupe_horizon_s=8 * TIMEOUT)
    got = rounds | beam.Map(lambda kv: (kv[0], kv[1].scan_id, tuple(r[0] for r in kv[1].responses),
                                        kv[1].ended_us, kv[1].status))
    assert_that(got, equal_to([
        (EARLY, SCAN, (80,), micros(T0 + 5 + TIMEOUT), TIMED_OUT),
        (TWICE, SCAN, (8060,), micros(T0 + 6 + TIMEOUT), TIMED_OUT),
        (LATE, SCAN, (22,), micros(T0 + 3 * TIMEOUT + 1 + TIMEOUT), TIMED_OUT),
        # its second answer came after its round had closed (and before the key was forgotten):
        # the address is tracked already; the answer stays in the events and the lake
    ]))
    result = p.run()
    result.wait_until_finish()
    assert_ran_on_prism(result, options)
