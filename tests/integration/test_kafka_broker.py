"""The real broker started by infra/kafka/kafka.sh: throughput of a plain round trip, order, durability."""

from __future__ import annotations

from collections import defaultdict

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def _consume_all(options: dict, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    consumer = KafkaConsumer(**options, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=int(timeout_s * 1000))
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records = []
    for record in consumer:
        records.append(record)
        if len(records) >= expected:
            break
    consumer.close()
    return records


def test_ten_thousand_messages_round_trip_in_partition_order(kafka, make_topic):
    topic = make_topic("roundtrip", partitions=6)
    producer = KafkaProducer(**kafka.client_options(), acks="all", linger_ms=5)
    keys = [f"198.18.0.{i}".encode() for i in range(50)]
    sent_per_key: dict[bytes, list[int]] = defaultdict(list)
    futures = []
    for seq in range(10_000):
        key = keys[seq % len(keys)]
        futures.append(producer.send(topic, key=key, value=seq.to_bytes(4, "big")))
        sent_per_key[key].append(seq)
    producer.flush()
    metadata = [f.get(timeout=30) for f in futures]
    producer.close()
    assert len({m.partition for m in metadata}) > 1, "keys should spread over several partitions"

    records = _consume_all(kafka.client_options(), topic, 10_000)
    assert len(records) == 10_000
    values = [int.from_bytes(r.value, "big") for r in records]
    assert sorted(values) == list(range(10_000)), "every message exactly once"

    by_partition: dict[int, list[int]] = defaultdict(list)
    got_per_key: dict[bytes, list[int]] = defaultdict(list)
    partition_of_key: dict[bytes, set[int]] = defaultdict(set)
    for r in records:
        by_partition[r.partition].append(r.offset)
        got_per_key[r.key].append(int.from_bytes(r.value, "big"))
        partition_of_key[r.key].add(r.partition)
    for offsets in by_partition.values():
        assert offsets == sorted(offsets)
    assert all(len(p) == 1 for p in partition_of_key.values()), "one key, one partition"
    assert got_per_key == sent_per_key, "per-key (hence per-partition) order is the send order"


def test_broker_stop_start_keeps_data_and_up_is_idempotent(second_broker):
    first = second_broker("up")
    assert first.returncode == 0, first.stdout + first.stderr
    again = second_broker("up")
    assert again.returncode == 0 and "already running" in again.stdout
    pid = (second_broker.state / "kafka.pid").read_text().strip()

    from kafka import KafkaAdminClient
    options = {"bootstrap_servers": f"127.0.0.1:{second_broker.port}"}
    admin = KafkaAdminClient(**options)
    admin.create_topics({"durable": {"num_partitions": 2, "replication_factor": 1}},
                        wait_for_metadata=True)
    admin.close()
    producer = KafkaProducer(**options, acks="all")
    for i in range(500):
        producer.send("durable", key=str(i % 7).encode(), value=str(i).encode())
    producer.flush()
    producer.close()

    stopped = second_broker("down")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert second_broker("status").returncode == 3, "status says not running after down"
    restarted = second_broker("up")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert (second_broker.state / "kafka.pid").read_text().strip() != pid

    records = _consume_all(options, "durable", 500)
    assert sorted(int(r.value) for r in records) == list(range(500))


def test_stale_pid_file_is_handled(second_broker):
    second_broker.state.mkdir(parents=True)
    (second_broker.state / "kafka.pid").write_text("999999\n")  # no such process
    status = second_broker("status")
    assert status.returncode == 3 and "not running" in status.stdout
    assert not (second_broker.state / "kafka.pid").exists(), "a stale pid file is removed"
    assert second_broker("up").returncode == 0
    assert second_broker("status").returncode == 0


def test_reset_wipes_the_data_dir(second_broker):
    assert second_broker("up").returncode == 0
    assert (second_broker.state / "data" / "meta.properties").exists()
    assert second_broker("reset").returncode == 0
    assert not (second_broker.state / "data").exists()
