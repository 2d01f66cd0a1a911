"""Streaming on Beam's Prism runner: the three features the scheduler pipeline is built on.

One small streaming pipeline exercises, on the session's Prism job server:

(a) an unbounded splittable DoFn that self-checkpoints (``defer_remainder``) every few elements,
    emits event-timestamped numbers and advances a manual watermark estimator;
(b) a stateful DoFn keyed by ``n % 3`` that sums in state and emits when an event-time timer fires;
(c) fixed 10 s event-time windows with a per-key sum.

Outputs go to JSON-lines files in ``tmp_path``: LOOPBACK workers run in this process, so the files
are visible to the test. Every run is checked against Prism's own job list and log, so a silent
runner substitution fails the test instead of passing it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate, window
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Timestamp

from pipelines.runners import RunnerProofError, pipeline_options, prove_ran_on_prism
from scanflow.config import BeamSettings, ConfigError

#: Event time of element 0; a multiple of 10 so the fixed windows start at element 0, 10, 20.
BASE_S = 1_700_000_000
COUNT = 30
BATCH = 5
#: When the per-key timers fire, in event time: after every element (the last is at BASE_S + 29).
FIRE_AT_S = BASE_S + 100


class _CountRange(RestrictionProvider):
    """Restriction of a generator element ``n``: the offsets [0, n)."""

    def initial_restriction(self, element: int) -> OffsetRange:
        return OffsetRange(0, element)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: int, restriction: OffsetRange) -> int:
        return restriction.size()

    def truncate(self, element: int, restriction: OffsetRange) -> None:
        # On drain nothing is owed: the numbers are synthetic.
        return None


class SelfCheckpointingCounter(beam.DoFn):
    """Unbounded SDF: for an element ``n``, emits 0..n-1 at ``BASE_S + i`` seconds, ``batch`` per call.

    After each batch it checkpoints with ``defer_remainder`` so the runner must resume it from the
    residual restriction: the shape of a Kafka partition reader. Each call leaves a marker file
    ``call-<first offset>-<count>`` in ``calls_dir`` so the test can see the checkpoints happen.
    """

    def __init__(self, calls_dir: str, batch: int) -> None:
        self.calls_dir = calls_dir
        self.batch = batch

    @beam.DoFn.unbounded_per_element()
    def process(self, element: int,
                tracker=beam.DoFn.RestrictionParam(_CountRange()),
                watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
        first = tracker.current_restriction().start
        position, emitted = first, 0
        while tracker.try_claim(position):
            at = Timestamp(BASE_S + position)
            yield window.TimestampedValue(position, at)
            # The watermark follows the data: nothing earlier than `at` will come from here.
            watermark.set_watermark(at)
            position += 1
            emitted += 1
            if emitted == self.batch:
                tracker.defer_remainder()
                break
        Path(self.calls_dir, f"call-{first}-{emitted}-{uuid.uuid4().hex[:8]}").touch()


class SumUntilEventTime(beam.DoFn):
    """Stateful: sums each key's values and emits ``(key, sum, fired_at_s)`` when its timer fires."""

    TOTAL = userstate.CombiningValueStateSpec("total", combine_fn=sum)
    FLUSH = userstate.TimerSpec("flush", userstate.TimeDomain.WATERMARK)

    def __init__(self, fire_at_s: int) -> None:
        self.fire_at_s = fire_at_s

    def process(self, element, total=beam.DoFn.StateParam(TOTAL), flush=beam.DoFn.TimerParam(FLUSH)):
        total.add(element[1])
        flush.set(Timestamp(self.fire_at_s))

    @userstate.on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, total=beam.DoFn.StateParam(TOTAL),
                 fired_at=beam.DoFn.TimestampParam):
        """The watermark passed ``fire_at_s``: every element of the key is in, emit the sum."""
        yield key, total.read(), fired_at.micros // 1_000_000


class _WindowStart(beam.DoFn):
    """``(key, sum)`` in a window to ``(key, window start relative to BASE_S, sum)``."""

    def process(self, element, win=beam.DoFn.WindowParam):
        key, total = element
        yield key, win.start.micros // 1_000_000 - BASE_S, total


class WriteJsonLines(beam.DoFn):
    """Test sink: each bundle's elements as one ``<prefix>-<uuid>.jsonl`` file in ``directory``."""

    def __init__(self, directory: str, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix

    def start_bundle(self) -> None:
        self._rows: list[str] = []

    def process(self, element) -> None:
        self._rows.append(json.dumps(element))

    def finish_bundle(self) -> None:
        if self._rows:
            path = Path(self.directory, f"{self.prefix}-{uuid.uuid4().hex}.jsonl")
            path.write_text("".join(row + "\n" for row in self._rows))


def build_smoke_pipeline(pipeline: beam.Pipeline, out_dir: Path) -> None:
    """Wire the smoke pipeline into ``pipeline``; outputs land in ``out_dir``."""
    numbers = (pipeline
               | "Seed" >> beam.Create([COUNT])
               | "Count" >> beam.ParDo(SelfCheckpointingCounter(str(out_dir), BATCH)))
    (numbers
     | "KeyByMod3" >> beam.Map(lambda n: (n % 3, n)).with_output_types(tuple[int, int])
     | "SumUntilEventTime" >> beam.ParDo(SumUntilEventTime(FIRE_AT_S))
     | "WriteStateful" >> beam.ParDo(WriteJsonLines(str(out_dir), "stateful")))
    windowed = (numbers
                | "Fixed10s" >> beam.WindowInto(window.FixedWindows(10))
                | "KeyByParity" >> beam.Map(lambda n: ("even" if n % 2 == 0 else "odd", n))
                | "SumPerWindow" >> beam.CombinePerKey(sum)
                | "WindowStart" >> beam.ParDo(_WindowStart()))
    # assert_that does work on Prism (a failing one fails the job); the files are checked as well
    # because they also carry what assert_that cannot see (timestamps, checkpoints).
    assert_that(windowed, equal_to(expected_windows()), label="WindowsMatch")
    windowed | "WriteWindows" >> beam.ParDo(WriteJsonLines(str(out_dir), "windows"))


def expected_stateful() -> list[tuple[int, int, int]]:
    """Per key ``n % 3``: the sum of its numbers, emitted at FIRE_AT_S."""
    return sorted((k, sum(n for n in range(COUNT) if n % 3 == k), FIRE_AT_S) for k in range(3))


def expected_windows() -> list[tuple[str, int, int]]:
    """Per 10 s window and parity: the sum of the numbers whose timestamps fall in the window."""
    out = []
    for start in range(0, COUNT, 10):
        for parity, rest in (("even", 0), ("odd", 1)):
            out.append((parity, start, sum(n for n in range(start, start + 10) if n % 2 == rest)))
    return sorted(out)


def read_rows(out_dir: Path, prefix: str) -> list[tuple]:
    """All rows the sink wrote under ``prefix``, as sorted tuples."""
    return sorted(tuple(json.loads(line)) for f in out_dir.glob(f"{prefix}-*.jsonl")
                  for line in f.read_text().splitlines())


def read_calls(out_dir: Path) -> list[tuple[int, int]]:
    """``(first offset, elements emitted)`` of every SDF process call, in offset order."""
    calls = []
    for f in out_dir.glob("call-*"):
        _, first, emitted, _ = f.name.split("-")
        calls.append((int(first), int(emitted)))
    return sorted(calls)


def test_streaming_sdf_state_timer_and_windows_on_prism(prism_options, assert_ran_on_prism, tmp_path):
    options = prism_options()
    pipeline = beam.Pipeline(options=options)
    build_smoke_pipeline(pipeline, tmp_path)
    result = pipeline.run()
    result.wait_until_finish()

    proof = assert_ran_on_prism(result, options)
    assert proof.state == "DONE"

    assert read_rows(tmp_path, "stateful") == expected_stateful()
    assert read_rows(tmp_path, "windows") == expected_windows()

    calls = [c for c in read_calls(tmp_path) if c[1] > 0]
    # Every offset emitted exactly once, by consecutive calls, none larger than a batch: the SDF
    # was resumed from its checkpoints (runner-side splits may only make calls smaller).
    assert sum(emitted for _, emitted in calls) == COUNT
    assert [first for first, _ in calls] == [sum(e for _, e in calls[:i]) for i in range(len(calls))]
    assert all(emitted <= BATCH for _, emitted in calls)
    assert len(calls) >= COUNT // BATCH


def test_proof_rejects_an_in_process_runner(settings):
    options = pipeline_options(settings, streaming=False, runner="fnapi")
    pipeline = beam.Pipeline(options=options)
    pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda n: n * 2)
    result = pipeline.run()
    result.wait_until_finish()

    with pytest.raises(RunnerProofError, match="in-process"):
        prove_ran_on_prism(result)


def test_proof_rejects_a_job_run_by_another_prism(settings, prism_server, prism_binary):
    # Without --job_endpoint Beam's PrismRunner starts a Prism of its own: still Prism, but not the
    # server the caller asked to check, and that must not pass as "ran there".
    options = pipeline_options(settings, streaming=True, runner="prism")
    pipeline = beam.Pipeline(options=options)
    pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda n: n * 2)
    result = pipeline.run()
    result.wait_until_finish()

    assert prove_ran_on_prism(result, options=options).state == "DONE"
    with pytest.raises(RunnerProofError, match="not known to the Prism server|another job service"):
        prove_ran_on_prism(result, server=prism_server, options=options)


def test_missing_prism_binary_says_how_to_build_it(tmp_path):
    beam_settings = BeamSettings(prism_location=str(tmp_path / "no-such-prism"))
    with pytest.raises(ConfigError, match="run `scanflow infra prism`"):
        pipeline_options(beam_settings, streaming=True, runner="prism")


def test_fnapi_refuses_streaming():
    with pytest.raises(ConfigError, match="bounded pipelines only"):
        pipeline_options(BeamSettings(), streaming=True, runner="fnapi")
