"""Bad records of many kinds among good ones: each bad one lands in the dead-letter topic with its reason."""

from __future__ import annotations

import random
from collections import Counter

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from connectors.avro_codec import BANNER_CAP, HEADER_SIZE, MARKER, AvroCodec, encode, make_record
from connectors.beam_kafka_decode import DecodeWithDeadLetter
from connectors.beam_kafka_source import ReadFromKafka
from connectors.kafka_io import (
    HEADER_ERROR_CLASS,
    HEADER_ERROR_MESSAGE,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    AvroProducer,
    make_consumer,
    topic_partitions,
)

GOOD = 10_000
BAD = 1_000


def _event(i: int, **overrides) -> dict:
    return {**make_record("ScanEvent", scan_id=f"scan-{i}", agent_id="agent-1",
                          ip=f"192.0.2.{i % 250 + 1}", port=80, transport="TCP", kind="BANNER",
                          timestamp=1_700_000_000_000_000 + i, banner=b"HTTP/1.0 200 OK\r\n",
                          banner_protocol="http"), **overrides}


def _bad_record_makers():
    """Kinds of bad records, each with the error class the decoder must report."""
    raw = AvroCodec(validate=False)  # writes contract violations the validating encoder refuses
    good = encode("ScanEvent", _event(0))
    command = encode("ScanCommand", make_record(
        "ScanCommand", command_id="c-1", targets=["192.0.2.0/24"],
        port_set={"name": "silent", "version": 1, "ports": []}))
    return {
        "empty value": ("MalformedRecord", lambda i: b""),
        "null value": ("MalformedRecord", lambda i: None),
        "json text": ("MalformedRecord", lambda i: f'{{"ip": "192.0.2.{i % 200}", "port": 80}}'.encode()),
        "wrong marker": ("MalformedRecord", lambda i: b"\xc3\x02" + good[2:]),
        "header only": ("MalformedRecord", lambda i: good[:HEADER_SIZE]),
        "truncated body": ("MalformedRecord", lambda i: good[: len(good) - 1 - i % 20]),
        "trailing bytes": ("MalformedRecord", lambda i: good + bytes([i % 256])),
        "unknown fingerprint": ("UnknownFingerprint",
                                lambda i: MARKER + i.to_bytes(8, "little") + good[HEADER_SIZE:]),
        "command on the events topic": ("UnresolvableSchema", lambda i: command),
        "invalid ip": ("InvalidIp", lambda i: raw.encode("ScanEvent", _event(i, ip=f"192.0.2.{256 + i}"))),
        "ip not an address": ("InvalidIp", lambda i: raw.encode("ScanEvent", _event(i, ip="scanme.example"))),
        "port zero": ("InvalidPort", lambda i: raw.encode("ScanEvent", _event(i, port=0))),
        "port too large": ("InvalidPort", lambda i: raw.encode("ScanEvent", _event(i, port=65536 + i))),
        "banner over the cap": ("InvalidRecord",
                                lambda i: raw.encode("ScanEvent", _event(i, banner=b"x" * (BANNER_CAP + 1)))),
        "done with a host-bit range": ("InvalidIp", lambda i: raw.encode("ScanDone", make_record(
            "ScanDone", scan_id=f"s-{i}", target="192.0.2.1/24"))),
        "random bytes": ("MalformedRecord", lambda i: random.Random(i).randbytes(5 + i % 60)),
    }


def test_bad_records_go_to_the_dead_letter_topic_with_their_reason(kafka, make_topic):
    events_topic = make_topic("dlq-events", partitions=4)
    dead_topic = make_topic("dlq-dead", partitions=2)
    makers = _bad_record_makers()
    kinds = sorted(makers)
    rng = random.Random(7)

    # 10,000 good and 1,000 bad records (every kind, round robin), shuffled together.
    outgoing = [("good", i) for i in range(GOOD)] + [(kinds[i % len(kinds)], i) for i in range(BAD)]
    rng.shuffle(outgoing)
    sent_bad = {}  # (partition, offset) -> (kind, key, value, headers)
    with AvroProducer(kafka) as producer:
        futures = []
        for kind, i in outgoing:
            if kind == "good":
                futures.append((None, producer.send(events_topic, "ScanEvent", _event(i))))
                continue
            value = makers[kind][1](i)
            key = None if i % 5 == 0 else f"bad-{i}".encode()
            headers = [("origin", f"agent-{i}".encode())] if i % 3 == 0 else None
            if key is None and value is None:
                key = b"tombstone"
            futures.append(((kind, key, value, tuple(headers or ())),
                            producer.send_bytes(events_topic, key, value, headers=headers)))
    for bad, future in futures:
        meta = future.get(timeout=30)
        if bad is not None:
            sent_bad[(meta.partition, meta.offset)] = bad
    assert len(sent_bad) == BAD

    with beam.Pipeline(runner=FnApiRunner()) as p:
        decoded = (p | "Read" >> ReadFromKafka(kafka, events_topic, start="earliest", stop="end")
                   | "Decode" >> DecodeWithDeadLetter(kafka, dead_topic))
        count = decoded | "Count" >> beam.combiners.Count.Globally()
        assert_that(count, equal_to([GOOD]), label="AllGoodDecoded")
        assert_that(decoded | "Schemas" >> beam.Map(lambda kv: kv[1].schema) | beam.Distinct(),
                    equal_to(["ScanEvent"]), label="OnlyEvents")

    consumer = make_consumer(kafka, consumer_timeout_ms=15_000)
    tps = topic_partitions(consumer, [dead_topic])
    # The pipeline flushed its dead-letter producer (acks=all) before finishing: the end offsets
    # are final, so they count the dead letters exactly.
    assert sum(consumer.end_offsets(tps).values()) == BAD
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    dead = []
    for letter in consumer:
        dead.append(letter)
        if len(dead) == BAD:
            break
    consumer.close()

    assert len(dead) == BAD
    reasons = Counter()
    for letter in dead:
        headers = dict(letter.headers)
        assert headers[HEADER_SOURCE_TOPIC] == events_topic.encode()
        source = (int(headers[HEADER_SOURCE_PARTITION]), int(headers[HEADER_SOURCE_OFFSET]))
        kind, key, value, original_headers = sent_bad.pop(source)
        # Original key and value bytes unchanged, original headers kept, the reason added.
        assert letter.key == key
        assert letter.value == value
        assert tuple(letter.headers[:len(original_headers)]) == original_headers
        assert headers[HEADER_ERROR_CLASS].decode() == makers[kind][0], kind
        assert headers[HEADER_ERROR_MESSAGE]
        reasons[headers[HEADER_ERROR_CLASS].decode()] += 1
    assert not sent_bad, "every bad record has exactly one dead letter"
    assert set(reasons) == {"MalformedRecord", "UnknownFingerprint", "UnresolvableSchema", "InvalidIp",
                            "InvalidPort", "InvalidRecord"}
