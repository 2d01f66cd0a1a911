"""The plain kafka-python layer against the real broker: partitioning, delivery, commits, dead-letter headers."""

from __future__ import annotations

import os

import pytest
from kafka import TopicPartition

from connectors.avro_codec import decode, make_record
from connectors.kafka_io import (
    HEADER_ERROR_CLASS,
    HEADER_SOURCE_OFFSET,
    AvroProducer,
    DeliveryError,
    commit_offsets,
    committed_offsets,
    dead_letter_headers,
    make_consumer,
    make_producer,
    partition_for,
    topic_partitions,
)


def _read_all(kafka, topic, expected, timeout_ms=30_000):
    consumer = make_consumer(kafka, consumer_timeout_ms=timeout_ms)
    tps = topic_partitions(consumer, [topic])
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records = []
    for record in consumer:
        records.append(record)
        if len(records) >= expected:
            break
    consumer.close()
    return records


def test_murmur2_partitioner_matches_javas_default():
    # Test vectors of Kafka's own Java client (UtilsTest.testMurmur2): Utils.murmur2 as signed ints.
    java = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
            b"a-little-bit-longer-string": -1486304829,
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}
    for key, signed in java.items():
        for n in (1, 3, 12, 100):
            assert partition_for(key, n) == (signed & 0x7FFFFFFF) % n


def test_records_land_in_the_partition_of_their_key(kafka, make_topic):
    topic = make_topic("partitioner", partitions=12)
    with AvroProducer(kafka) as producer:
        for i in range(600):
            producer.send(topic, "ScanEvent", make_record(
                "ScanEvent", scan_id="s", ip=f"198.18.{i // 256}.{i % 256}", port=80 + i % 3,
                kind="SYN_ACK", transport="TCP", timestamp=i))
    records = _read_all(kafka, topic, 600)
    assert len(records) == 600
    for r in records:
        assert r.partition == partition_for(r.key, 12)
        assert decode(r.value).record["ip"] == r.key.decode()
    assert len({r.partition for r in records}) == 12


def test_flush_raises_when_the_broker_refuses_a_record(kafka, make_topic):
    topic = make_topic("toolarge", partitions=1, **{"max.message.bytes": "2048"})
    producer = AvroProducer(kafka)
    producer.send_bytes(topic, b"k", b"x" * 100)
    producer.flush()  # a small record is fine
    producer.send_bytes(topic, b"k", os.urandom(10_000))  # incompressible, larger than the topic allows
    with pytest.raises(DeliveryError, match="not delivered"):
        producer.flush()
    producer.close()


def test_event_time_timestamps_are_optional(kafka, make_topic):
    topic = make_topic("eventtime", partitions=1)
    rec = make_record("ScanEvent", scan_id="s", ip="198.18.0.1", port=22, kind="SYN_ACK",
                      timestamp=1_700_000_000_123_456)
    with AvroProducer(kafka, event_time_timestamps=True) as producer:
        producer.send(topic, "ScanEvent", rec)
    with AvroProducer(kafka) as producer:
        producer.send(topic, "ScanEvent", rec)
    first, second = _read_all(kafka, topic, 2)
    assert first.timestamp == 1_700_000_000_123
    assert second.timestamp > 1_700_000_000_123  # send time


def test_commit_from_a_manually_assigned_consumer_is_seen_by_the_group(kafka, make_topic):
    topic = make_topic("commit", partitions=2)
    producer = make_producer(kafka)
    for i in range(20):
        producer.send(topic, key=str(i).encode(), value=b"v")
    producer.flush()
    producer.close()
    group = f"g-{topic}"
    committer = make_consumer(kafka, group_id=group)
    commit_offsets(committer, {(topic, 0): 3, (topic, 1): 5})
    committer.close()

    fresh = make_consumer(kafka, group_id=group)
    tps = topic_partitions(fresh, [topic])
    assert committed_offsets(fresh, tps) == {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 5}
    fresh.close()


def test_dead_letter_headers_name_reason_and_source():
    headers = dict(dead_letter_headers("InvalidIp", "bad", "scanflow.events", 4, 1234, 99))
    assert headers[HEADER_ERROR_CLASS] == b"InvalidIp"
    assert headers[HEADER_SOURCE_OFFSET] == b"1234"
    assert len(dict(dead_letter_headers("X", "m" * 5000))["scanflow.error.message"]) == 1000
