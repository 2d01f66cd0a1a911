"""WriteToKafka through a broker outage, on a broker of the test's own (never the session broker).

A live pipeline must not fail its job because the broker restarts: the write step keeps the records
of its bundle and sends them again (a new producer each time) until they are acknowledged, for up to
``connectors.beam_kafka_sink.WRITE_OUTAGE_S``. Here the broker is stopped before the pipeline starts and
started again while the write step waits; every record arrives. A write that fails for a reason
time does not cure (a record too large for the topic) still fails at once
(``tests/integration/test_kafka_beam.py::test_nothing_is_committed_when_the_sink_fails``).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from connectors.beam_kafka_sink import WriteToKafka
from connectors.kafka_io import make_consumer, topic_partitions
from scanflow.config import KafkaSettings


def test_write_waits_out_a_broker_restart(second_broker):
    up = second_broker("up")
    assert up.returncode == 0, up.stdout + up.stderr
    kafka = dataclasses.replace(KafkaSettings(), bootstrap_servers=second_broker.bootstrap,
                                request_timeout_ms=5000)
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka.client_options())
    admin.create_topics({"out": {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True)
    admin.close()
    down = second_broker("down")
    assert down.returncode == 0, down.stdout + down.stderr

    result: dict = {}

    def run():
        try:
            with beam.Pipeline(runner=FnApiRunner()) as p:
                _ = (p | beam.Create([(f"k{i}", f"v{i}".encode()) for i in range(200)])
                     | WriteToKafka(kafka, "out"))
            result["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    writer = threading.Thread(target=run, daemon=True)
    writer.start()
    time.sleep(8)                                      # the write step meets a broker that is away
    assert writer.is_alive(), result                   # and waits instead of failing
    restarted = second_broker("up")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    writer.join(300)
    assert not writer.is_alive(), "the write did not finish within 300 s of the broker's restart"
    assert result.get("ok"), result.get("error")

    consumer = make_consumer(kafka)
    tps = topic_partitions(consumer, ["out"])
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(set(values)) < 200 and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in batch)
    consumer.close()
    assert set(values) == {f"v{i}".encode() for i in range(200)}
