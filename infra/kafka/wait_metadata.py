"""Wait until a Kafka broker answers a metadata request: wait_metadata.py HOST:PORT TIMEOUT_S."""
import sys
import time


def main() -> int:
    bootstrap, timeout = sys.argv[1], float(sys.argv[2])
    try:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError
    except ImportError:
        print("kafka: error: kafka-python is not installed; run `make setup` first", file=sys.stderr)
        return 2
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            try:
                consumer.topics()  # a MetadataRequest answered by the broker
                return 0
            finally:
                consumer.close()
        except KafkaError as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    print(f"kafka: no metadata answer from {bootstrap} within {timeout:.0f} s ({last})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
