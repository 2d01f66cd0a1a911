"""Throughput of the event path, all in one run so the ratios hold.

1. produce: encode + send with :class:`AvroProducer` (acks=all), one process and N processes;
2. raw baseline: kafka-python consumer + codec decode in a plain loop (no Beam);
3. bounded Beam: ReadFromKafka(stop="end") + DecodeRecords on the FnApiRunner;
4. unbounded Beam: live ReadFromKafka + DecodeRecords on Prism, until every event has been decoded.

Run (the broker must be up: ``scanflow infra up``)::

    .venv/bin/python bench/bench_connectors.py [--events 200000] [--partitions 12] [--producers 2]

Figures are events per second of wall-clock time, startup included (consumer connections, Beam
pipeline construction, Prism job submission), and events per CPU-second of this process (all its
threads: the kafka-python I/O threads, the in-process Beam SDK worker), which other work on a busy
machine disturbs much less; the load average is printed for the same reason.
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
from connectors.beam_kafka_decode import EVENT_SCHEMAS, DecodeRecords
from connectors.beam_kafka_sink import WriteToKafka
from connectors.beam_kafka_source import ReadFromKafka
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


class _Clock:
    """Wall-clock and this process's CPU time (all threads) of a ``with`` block."""

    def __enter__(self) -> "_Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def rates(self, n: int) -> tuple[float, float]:
        return n / self.wall, n / self.cpu if self.cpu > 0 else float("nan")


Rates = tuple[float, float]  # events per wall-clock second, events per CPU-second of this process


def bench_produce(settings: Settings, topic: str, n: int, processes: int) -> dict[str, Rates]:
    """Encode + send rates: one process, ``processes`` processes, and the two parts on their own."""
    out: dict[str, Rates] = {}
    events = make_events(n)
    codec = default_codec()
    with _Clock() as clock:
        encoded = [codec.encode("ScanEvent", e) for e in events]
    out["encode only (validate + fastavro)"] = clock.rates(n)

    producer = AvroProducer(settings.kafka)
    producer.send_bytes(topic, b"warm-up", b"")
    producer.flush()
    with _Clock() as clock:
        for event, value in zip(events, encoded):
            producer.send_bytes(topic, event["ip"].encode(), value)
        producer.flush()
    out["send only (kafka-python, pre-encoded)"] = clock.rates(n)
    producer.close()

    cpu = time.process_time()
    wall = _produce_worker(settings, topic, n, n)
    out["produce path (encode + send), 1 process"] = (n / wall, n / (time.process_time() - cpu))
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
        out[f"produce path (encode + send), {processes} processes"] = (per * processes / elapsed, float("nan"))
    return out


def bench_raw_consume(settings: Settings, topic: str, n: int) -> Rates:
    """The baseline: one kafka-python consumer over every partition + decode, in a plain loop."""
    codec = AvroCodec()
    expect = frozenset(EVENT_SCHEMAS)
    with _Clock() as clock:
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
    consumer.close()
    return clock.rates(seen)


def bench_bounded(settings: Settings, topic: str, n: int) -> Rates:
    """ReadFromKafka (bounded) + DecodeRecords on the FnApiRunner, pipeline startup included."""
    with _Clock() as clock:
        with beam.Pipeline(runner=FnApiRunner()) as p:
            decoded, _ = (p | "Read" >> ReadFromKafka(settings.kafka, topic, start="earliest", stop="end")
                          | "Decode" >> DecodeRecords())
            _ = decoded | "Count" >> beam.combiners.Count.Globally()
    return clock.rates(n)


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


def _prism_run(settings: Settings, topic: str, progress_topic: str, n: int) -> _Clock:
    """Start a live read + decode on Prism; the time from submission until ``n`` events are decoded.

    The SDK worker runs in this process (LOOPBACK), so the CPU time is the Python side's; Prism's
    own (Go) process is not counted.
    """
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
    seen = 0
    deadline = time.monotonic() + 600
    with _Clock() as clock:
        result = p.run()
        try:
            while seen < n and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=100).values():
                    seen += sum(int(r.value) for r in batch)
        except BaseException:
            result.cancel()
            raise
    result.cancel()
    consumer.close()
    if seen < n:
        raise RuntimeError(f"Prism decoded {seen} of {n} events within 600 s")
    return clock


def bench_prism(settings: Settings, topic: str, empty_topic: str, progress_topic: str,
                n: int) -> tuple[Rates, float, Rates]:
    """Live read + decode on Prism: (rates incl. job start, job start in s, rates without it).

    The job start (submission, SDK worker, consumers, first bundle) is measured by the same pipeline
    on a topic holding a single event, and subtracted.
    """
    with AvroProducer(settings.kafka) as producer:
        producer.send(empty_topic, "ScanEvent", make_events(1)[0])
    startup = _prism_run(settings, empty_topic, progress_topic, 1)
    total = _prism_run(settings, topic, progress_topic, n)
    steady = (n / max(total.wall - startup.wall, 1e-9), n / max(total.cpu - startup.cpu, 1e-9))
    return total.rates(n), startup.wall, steady


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

        rows: list[tuple[str, Rates]] = list(bench_produce(settings, scratch_topic, n, args.producers).items())
        raw = bench_raw_consume(settings, read_topic, n)
        rows.append(("raw baseline: kafka-python consume + decode", raw))
        rows.append(("Beam bounded read + decode, FnApiRunner", bench_bounded(settings, read_topic, n)))
        if not args.skip_prism:
            total, startup, steady = bench_prism(settings, read_topic, primer_topic, progress_topic, n)
            rows.append(("Beam live read + decode, Prism (incl. job start)", total))
            rows.append((f"Beam live read + decode, Prism (without the {startup:.1f} s job start)", steady))
        width = max(len(name) for name, _ in rows)
        print(f"  {'':<{width}}  {'events/s':>10}  {'vs raw':>6}  {'events/CPU-s':>12}")
        for name, (rate, per_cpu) in rows:
            ratio = f"{rate / raw[0]:5.2f}x" if "Beam" in name else ""
            cpu = f"{per_cpu:12,.0f}" if per_cpu == per_cpu else f"{'-':>12}"
            print(f"  {name:<{width}}  {rate:>10,.0f}  {ratio:>6}  {cpu}")
        print(f"load average {os.getloadavg()[0]:.2f} at end")
    finally:
        admin.delete_topics([read_topic, scratch_topic, progress_topic, primer_topic])
        admin.close()


if __name__ == "__main__":
    main()
