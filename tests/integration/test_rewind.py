"""Where a restarted live scheduler resumes reading events (``pipelines.sources.rewound_start_offsets``),
against the real broker: ``rewind_s`` of record time before each partition's committed offset, never
after it, the beginning where nothing was committed, None for a group that never committed."""

from __future__ import annotations

import uuid

from kafka import KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from connectors.kafka_io import make_consumer
from pipelines.sources import rewound_start_offsets

T0_MS = 1_750_000_000_000


def test_rewind_goes_back_by_record_time_per_partition(kafka, make_topic):
    topic = make_topic("rewind", 3)
    producer = KafkaProducer(**kafka.client_options())
    # Partitions 0 and 1: one record per 10 s of record time, 60 records (offsets 0..59).
    for p in (0, 1):
        for i in range(60):
            producer.send(topic, value=b"x", partition=p, timestamp_ms=T0_MS + i * 10_000)
    producer.flush()
    producer.close()
    group = f"rewind-{uuid.uuid4().hex[:8]}"
    assert rewound_start_offsets(kafka, topic, group, 120) is None        # nothing committed yet

    consumer = make_consumer(kafka, group_id=group)
    # Partition 0 committed at 50 (last read record at 490 s): rewind 120 s -> record at 370 s = offset 37.
    # Partition 1 committed at 5: rewind 120 s reaches before the first record -> offset 0.
    # Partition 2: never committed -> its beginning.
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(50, "", -1),
                     TopicPartition(topic, 1): OffsetAndMetadata(5, "", -1)})
    consumer.close()
    got = rewound_start_offsets(kafka, topic, group, 120)
    assert got == {(topic, 0): 37, (topic, 1): 0, (topic, 2): 0}
    # No rewind: from the last record read before the commit (re-read once, dropped by scan id).
    assert rewound_start_offsets(kafka, topic, group, 0)[(topic, 0)] == 49
