"""What a local Kafka cluster says about itself: cluster_status.py BOOTSTRAP_LIST LIVE_NODES TIMEOUT_S.

Waits until the cluster answers and lists at least LIVE_NODES registered, unfenced brokers, then
prints one line per broker and the partitions whose in-sync replicas are fewer than
their replicas (under-replicated) or that have no leader (offline). Exit 0 once LIVE_NODES brokers
are registered, 1 if not within TIMEOUT_S.
"""
import sys
import time


def main() -> int:
    bootstrap, live, timeout = sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[3])
    try:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError
    except ImportError:
        print("kafka: error: kafka-python is not installed; run `make setup` first", file=sys.stderr)
        return 2
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        except KafkaError as exc:
            last = exc
            time.sleep(0.5)
            continue
        try:
            cluster = admin.describe_cluster()
            nodes = sorted(cluster["brokers"], key=lambda b: b["broker_id"])
            active = [b for b in nodes if not b.get("is_fenced")]
            if len(active) < live:
                last = f"{len(active)} brokers registered and not fenced"
                time.sleep(0.5)
                continue
            topics = admin.describe_topics()
        except KafkaError as exc:
            last = exc
            time.sleep(0.5)
            continue
        finally:
            admin.close()
        for b in nodes:
            print(f"kafka: broker {b['broker_id']} registered at {b['host']}:{b['port']}"
                  + (" (fenced: not serving)" if b.get("is_fenced") else ""))
        parts = [p for t in topics for p in t["partitions"]]
        under = sum(1 for p in parts if len(p["isr_nodes"]) < len(p["replica_nodes"]))
        offline = sum(1 for p in parts if p["leader_id"] < 0)
        print(f"kafka: cluster {cluster.get('cluster_id')}: {len(active)} active brokers; "
              f"{len(parts)} partitions, {under} under-replicated, {offline} offline")
        return 0
    print(f"kafka: the cluster at {','.join(bootstrap)} did not list {live} brokers within {timeout:.0f} s ({last})",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
