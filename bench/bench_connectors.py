"""Throughput of the event path, all in one run so the ratios hold.

1. produce: encode + send with :class:`AvroProducer` (acks=all), one process and N processes;
2. raw baseline: kafka-python consumer + codec decode in a plain loop (no Beam);
3. bounded Beam: ReadFromKafka(stop="end") + DecodeRecords on the FnApiRunner;
4. unbounded Beam: live ReadFromKafka + DecodeRecords on Prism, until every event has been decoded.

Run (the broker must be up: ``scanflow infra up``)::

    .venv/bin/python bench/bench_connectors.py [--events 200000] [--partitions 12] [--producers 2]

Figures are events per second of wall-clock time, startup included (consumer connections, Beam
pipeline construction, Prism job submission); the load average is printed because other work on the
machine changes them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
import uuid

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue
from kafka.admin import NewTopic

from connectors.avro_codec import AvroCodec, default_codec, make_record
from connectors.beam_kafka import EVENT_SCHEMAS, DecodeRecords, ReadFromKafka, WriteToKafka
from connectors.kafka_admin import admin_client
from connectors.kafka_io import AvroProducer, make_consumer, topic_partitions
from scanflow.config import Settings, load_settings


def make_events(n: int, offset: int = 0) -> list[dict]:
    """ScanEvents as an agent would emit them: SYN-ACKs and banners, several ports per address."""
    events = []
    for j in range(offset, offset + n):
        i = j // 4
        banner = b"HTTP/1.1 200 OK\r\nServer: lighttpd/1.4.35\r\n\r\n" if j % 4 == 3 else None
        events.append(make_record(
            "ScanEvent", scan_id=f"scan-{i // 16}", agent_id="agent-1",
            ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", port=(80, 443, 22, 8080)[j % 4],
            transport="TCP", kind="BANNER" if banner else "SYN_ACK",
            timestamp=1_714_564_800_000_000 + j, banner=banner,
            banner_protocol="http" if banner else None))
    return events


def _produce_worker(settings: Settings, topic: str, n: int, offset: int, barrier=None, results=None) -> float:
    """Encode and send ``n`` events from this process; returns the seconds it took (after warm-up)."""
    events = make_events(n, offset)
    producer = AvroProducer(settings.kafka)
    producer.send_bytes(topic, b"warm-up", b"")  # connect and fetch metadata before the clock starts
    producer.flush()
    if barrier is not None:
        barrier.wait()
    start = time.time()
    for event in events:
        producer.send(topic, "ScanEvent", event)
    producer.flush()
    end = time.time()
    producer.close()
    if results is not None:
        results.put((start, end))
    return end - start


def bench_produce(settings: Settings, topic: str, n: int, processes: int) -> dict[str, float]:
    """Encode + send rates: one process, ``processes`` processes, and the two parts on their own."""
    out: dict[str, float] = {}
    events = make_events(n)
    codec = default_codec()
    start = time.perf_counter()
    encoded = [codec.encode("ScanEvent", e) for e in events]
    out["encode only (validate + fastavro)"] = n / (time.perf_counter() - start)

    producer = AvroProducer(settings.kafka)
    producer.send_bytes(topic, b"warm-up", b"")
    producer.flush()
    start = time.perf_counter()
    for event, value in zip(events, encoded):
        producer.send_bytes(topic, event["ip"].encode(), value)
    producer.flush()
    out["send only (kafka-python, pre-encoded)"] = n / (time.perf_counter() - start)
    producer.close()

    out["produce path (encode + send), 1 process"] = n / _produce_worker(settings, topic, n, n)
    if processes > 1:
        # Separate processes, as separate agents would be: the GIL does not serialise them. The
        # clock runs from a common start (after imports and connection) to the last flush.
        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(processes), ctx.Queue()
        per = n // processes
        workers = [ctx.Process(target=_produce_worker,
                               args=(settings, topic, per, 2 * n + k * per, barrier, results))
                   for k in range(processes)]
        for w in workers:
            w.start()
        spans = [results.get(timeout=600) for _ in workers]
        for w in workers:
            w.join()
        elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
        out[f"produce path (encode + send), {processes} processes"] = per * processes / elapsed
    return out


def bench_raw_consume(settings: Settings, topic: str, n: int) -> float:
    """The baseline: one kafka-python consumer over every partition + decode, in a plain loop."""
    codec = AvroCodec()
    expect = frozenset(EVENT_SCHEMAS)
    start = time.perf_counter()
    consumer = make_consumer(settings.kafka)
    tps = topic_partitions(consumer, [topic])
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen = 0
    while seen < n:
        for batch in consumer.poll(timeout_ms=1000).values():
            for record in batch:
                codec.decode(record.value, expect)
                seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return seen / elapsed


def bench_bounded(settings: Settings, topic: str, n: int) -> float:
    """ReadFromKafka (bounded) + DecodeRecords on the FnApiRunner, pipeline startup included."""
    start = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        decoded, _ = (p | "Read" >> ReadFromKafka(settings.kafka, topic, start="earliest", stop="end")
                      | "Decode" >> DecodeRecords())
        _ = decoded | "Count" >> beam.combiners.Count.Globally()
    return n / (time.perf_counter() - start)


class _CountPerBundle(beam.DoFn):
    """Emits one (None, count) per bundle: a cheap progress signal for the Prism run."""

    def start_bundle(self):
        self._n = 0

    def process(self, element):
        self._n += 1

    def finish_bundle(self):
        if self._n:
            yield WindowedValue((None, str(self._n).encode()), GlobalWindow().max_timestamp(),
                                [GlobalWindow()])


def _prism_run(settings: Settings, topic: str, progress_topic: str, n: int) -> float:
    """Start a live read + decode on Prism; seconds from submission until ``n`` events are decoded."""
    from pipelines.runners import pipeline_options

    options = pipeline_options(settings, streaming=True, runner="prism")
    p = beam.Pipeline(options=options)
    decoded, _ = (p | "Read" >> ReadFromKafka(settings.kafka, topic, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                                              start="earliest")
                  | "Decode" >> DecodeRecords())
    _ = (decoded | "CountPerBundle" >> beam.ParDo(_CountPerBundle())
         | "Progress" >> WriteToKafka(settings.kafka, progress_topic))
    consumer = make_consumer(settings.kafka)
    tps = topic_partitions(consumer, [progress_topic])
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    consumer.poll(timeout_ms=0)  # resolve the end positions before the pipeline writes
    start = time.perf_counter()
    result = p.run()
    seen = 0
    deadline = time.monotonic() + 600
    try:
        while seen < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=100).values():
                seen += sum(int(r.value) for r in batch)
        elapsed = time.perf_counter() - start
    finally:
        result.cancel()
        consumer.close()
    if seen < n:
        raise RuntimeError(f"Prism decoded {seen} of {n} events within 600 s")
    return elapsed


def bench_prism(settings: Settings, topic: str, empty_topic: str, progress_topic: str,
                n: int) -> tuple[float, float, float]:
    """Live read + decode on Prism: (rate incl. job start, job start latency s, rate without it).

    The job start (submission, SDK worker, consumers, first bundle) is measured by the same pipeline
    on a topic holding a single event, and subtracted.
    """
    with AvroProducer(settings.kafka) as producer:
        producer.send(empty_topic, "ScanEvent", make_events(1)[0])
    startup = _prism_run(settings, empty_topic, progress_topic, 1)
    total = _prism_run(settings, topic, progress_topic, n)
    return n / total, startup, n / max(total - startup, 1e-9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--producers", type=int, default=2, help="processes for the parallel produce figure")
    parser.add_argument("--skip-prism", action="store_true")
    args = parser.parse_args(argv)
    settings = load_settings()
    n = args.events

    admin = admin_client(settings.kafka)
    read_topic = f"bench.events.{uuid.uuid4().hex[:8]}"
    scratch_topic = f"bench.scratch.{uuid.uuid4().hex[:8]}"
    progress_topic = f"bench.progress.{uuid.uuid4().hex[:8]}"
    primer_topic = f"bench.primer.{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(read_topic, args.partitions, 1), NewTopic(scratch_topic, args.partitions, 1),
                         NewTopic(progress_topic, 1, 1), NewTopic(primer_topic, args.partitions, 1)])
    try:
        print(f"scanflow connector benchmark: {n:,} ScanEvents, {args.partitions} partitions, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
        # The topic the readers read: filled by one producer, not timed.
        with AvroProducer(settings.kafka) as producer:
            for event in make_events(n):
                producer.send(read_topic, "ScanEvent", event)

        rows: list[tuple[str, float]] = []
        for name, rate in bench_produce(settings, scratch_topic, n, args.producers).items():
            rows.append((name, rate))
        raw = bench_raw_consume(settings, read_topic, n)
        rows.append(("raw baseline: kafka-python consume + decode", raw))
        bounded = bench_bounded(settings, read_topic, n)
        rows.append(("Beam bounded read + decode, FnApiRunner", bounded))
        if not args.skip_prism:
            total, startup, steady = bench_prism(settings, read_topic, primer_topic, progress_topic, n)
            rows.append(("Beam live read + decode, Prism (incl. job start)", total))
            rows.append((f"Beam live read + decode, Prism (without the {startup:.1f} s job start)", steady))
        width = max(len(name) for name, _ in rows)
        for name, rate in rows:
            ratio = f"  {rate / raw:5.2f} x raw" if "Beam" in name else ""
            print(f"  {name:<{width}}  {rate:>10,.0f} events/s{ratio}")
        print(f"load average {os.getloadavg()[0]:.2f} at end")
    finally:
        admin.delete_topics([read_topic, scratch_topic, progress_topic, primer_topic])
        admin.close()


if __name__ == "__main__":
    main()
