"""When a stopped agent starts itself again (scanflow/cli/agent.py, ``restart_reason``) and what a
failed delivery says about itself (connectors/kafka_io.py, ``DeliveryError.retriable``)."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from connectors.kafka_io import AvroProducer, DeliveryError
from scanflow.cli.agent import restart_reason
from scanflow.config import KafkaSettings


class FailingProducer:
    """Fails every send with ``error`` (a stand-in for kafka-python's producer)."""

    def __init__(self, *errors):
        self.errors = list(errors)

    def send(self, topic, key=None, value=None, headers=None, timestamp_ms=None):
        error = self.errors.pop(0)

        class Future:
            def add_errback(self, fn):
                fn(error)
        return Future()

    def flush(self, timeout=None):
        pass


def _flush_error(*errors) -> DeliveryError:
    producer = AvroProducer(KafkaSettings(), producer=FailingProducer(*errors))
    for _ in errors:
        producer.send_bytes("t", b"k", b"v")
    with pytest.raises(DeliveryError) as info:
        producer.flush()
    return info.value


def test_a_delivery_that_timed_out_can_be_retried_a_too_large_record_cannot():
    assert _flush_error(KafkaTimeoutError("expired"), KafkaTimeoutError("expired")).retriable
    assert not _flush_error(KafkaTimeoutError("expired"), MessageSizeTooLargeError("big")).retriable
    assert not DeliveryError("no failures listed").retriable


def test_only_a_retriable_delivery_failure_restarts_the_agent_and_only_when_restarts_are_on():
    timed_out = _flush_error(KafkaTimeoutError("expired"))
    too_large = _flush_error(MessageSizeTooLargeError("big"))
    assert "not delivered" in restart_reason(1, timed_out, 300.0)
    assert restart_reason(1, too_large, 300.0) is None          # would fail again: exit with the error
    assert restart_reason(1, timed_out, 0.0) is None            # restarts off
    assert restart_reason(0, None, 300.0) is None               # a clean stop
    assert restart_reason(1, RuntimeError("other"), 300.0) is None
