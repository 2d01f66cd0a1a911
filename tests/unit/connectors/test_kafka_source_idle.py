"""The Kafka source's idle partition (connectors/beam_kafka_source.py): when the client does not yet
know the partition's end (no fetch answered since the last seek), the read asks the broker once and,
caught up, moves the watermark with the wall clock. The consumer is a stand-in (the same path on a
real broker and Prism: tests/integration/test_kafka_beam.py, idle partitions)."""

from __future__ import annotations

import dataclasses

from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from kafka.errors import KafkaTimeoutError

from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.utils.timestamp import Duration

from connectors.beam_kafka_source import _RESTRICTIONS, UNBOUNDED, KafkaPartition, ReadFromKafka, _ReadLive
from scanflow.config import KafkaSettings


class IdleConsumer:
    """An empty partition at ``end``: polls return nothing, the fetch-based highwater is unknown."""

    def __init__(self, end: int | None, fail: bool = False):
        self.end, self.fail, self.asked = end, fail, 0

    def poll(self, timeout_ms, max_records):
        return {}

    def position(self, tp):
        return 0

    def highwater(self, tp):
        return None

    def end_offsets(self, tps, timeout_ms=None):
        self.asked += 1
        if self.fail:
            raise KafkaTimeoutError("no answer")
        return {tp: self.end for tp in tps}


def _read(consumer, max_bundle_s=0.3):
    config = dataclasses.replace(ReadFromKafka(KafkaSettings(), "t", start="earliest", watermark_lag_s=2.0).config,
                                 max_bundle_s=max_bundle_s)
    dofn = _ReadLive(config)
    dofn.setup()
    dofn._consumer_at = lambda tp, offset: consumer
    element = KafkaPartition("t", 0, 0, None)
    threadsafe = ThreadsafeRestrictionTracker(_RESTRICTIONS.create_tracker(OffsetRange(0, UNBOUNDED)))
    watermark = ManualWatermarkEstimator(MIN_TIMESTAMP)
    out = list(dofn._read_range(element, RestrictionTrackerView(threadsafe), watermark, None, live=True))
    residual, delay = threadsafe.deferred_status()
    return out, watermark.current_watermark(), delay


def test_an_idle_partition_whose_end_is_unknown_asks_once_and_moves_the_watermark():
    consumer = IdleConsumer(end=0)
    before = Timestamp.now()
    out, wm, delay = _read(consumer)
    assert out == [] and consumer.asked == 1
    assert wm >= before - 2.0                          # now - the lag: the window of old records can fire
    assert delay > Duration(seconds=0.1)               # the idle resume (0.2 s), not the end of a full bundle


def test_a_partition_behind_its_end_keeps_its_watermark():
    consumer = IdleConsumer(end=10)                    # records the client has not fetched yet
    out, wm, delay = _read(consumer)
    assert out == [] and consumer.asked == 1 and wm == MIN_TIMESTAMP and delay <= Duration(0)


def test_a_broker_that_does_not_answer_leaves_the_watermark_where_it_is():
    consumer = IdleConsumer(end=0, fail=True)
    out, wm, delay = _read(consumer)
    assert out == [] and consumer.asked == 1 and wm == MIN_TIMESTAMP and delay <= Duration(0)


def _bounded_read_without_broker(wait_for_broker: bool):
    from kafka.errors import KafkaConnectionError

    read = ReadFromKafka(KafkaSettings(), "t", start="earliest", stop="end", wait_for_broker=wait_for_broker)
    dofn = _ReadLive(read.config)
    dofn.setup()

    def no_broker(tp, offset):
        raise KafkaConnectionError("Connection reset by peer")
    dofn._consumer_at = no_broker
    threadsafe = ThreadsafeRestrictionTracker(_RESTRICTIONS.create_tracker(OffsetRange(0, 10)))
    out = list(dofn._read_range(KafkaPartition("t", 0, 0, 10), RestrictionTrackerView(threadsafe),
                                ManualWatermarkEstimator(MIN_TIMESTAMP), None, live=False))
    return out, threadsafe.deferred_status()


def test_a_bounded_read_fails_on_a_lost_broker_unless_it_waits_for_it():
    import pytest
    from kafka.errors import KafkaConnectionError

    with pytest.raises(KafkaConnectionError):               # a replay says the broker is gone
        _bounded_read_without_broker(wait_for_broker=False)
    out, (residual, delay) = _bounded_read_without_broker(wait_for_broker=True)   # the restore waits
    assert out == [] and residual.stop == 10 and delay > Duration(seconds=1)
