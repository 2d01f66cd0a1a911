"""The Kafka write step's errors: a bundle whose records a broker refuses fails with the error that
says so, never with what the broken producer raises afterwards.

kafka-python's producer, once it aborted its batches (say, the topic refuses records that large),
raises again on ``close``; Beam tears a failed step down, and an exception from ``teardown`` replaced
the bundle's own error (a clean-clone run saw "UnknownError: Future not done" instead of "20
record(s) ... were not acknowledged"). The broker side of this is covered on a real broker in
``tests/integration/test_commands_then_states.py``; here a stand-in producer makes it certain.
"""

from __future__ import annotations

import pytest
from kafka.errors import KafkaError, MessageSizeTooLargeError

from connectors import beam_kafka_sink
from scanflow.config import KafkaSettings


class _Future:
    def __init__(self, error):
        self.is_done, self.exception = True, error

    def failed(self):
        return self.exception is not None


class _BrokenProducer:
    """Refuses every record; raises on close, as an aborted kafka-python producer does."""

    closed = 0

    def send(self, topic, key=None, value=None, headers=None):
        return _Future(MessageSizeTooLargeError())

    def flush(self, timeout=None):
        return None

    def close(self, timeout=None):
        type(self).closed += 1
        raise KafkaError("Future not done")


@pytest.fixture
def write_fn(monkeypatch):
    monkeypatch.setattr(beam_kafka_sink, "make_producer", lambda kafka, **kw: _BrokenProducer())
    _BrokenProducer.closed = 0
    fn = beam_kafka_sink._WriteFn(KafkaSettings(), "cmd", {}, outage_s=5)
    fn.setup()
    return fn


def test_refused_records_fail_the_bundle_with_the_reason_and_teardown_raises_nothing(write_fn):
    write_fn.start_bundle()
    for i in range(3):
        write_fn.process((f"10.0.0.{i}", b"x" * 100))
    with pytest.raises(RuntimeError, match=r"3 record\(s\) to cmd were not acknowledged: MessageSizeTooLarge"):
        write_fn.finish_bundle()
    write_fn.teardown()                     # the old code raised KafkaError here
    assert _BrokenProducer.closed == 1      # the broken producer was closed once, when the bundle failed


def test_teardown_of_a_producer_that_fails_to_close_reports_and_does_not_raise(write_fn, caplog):
    write_fn._producer = _BrokenProducer()
    write_fn.teardown()
    assert write_fn._producer is None
    assert "closing the producer failed" in caplog.text
