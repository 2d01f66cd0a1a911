"""The archive pipeline: the events topic (ScanEvent and ScanDone) into the Parquet lake.

    Kafka scanflow.events --ReadFromKafka--> DecodeRecords (dead letters to Kafka) --WriteToLake--> events/ + scans/

Bounded (a replay of an offset or time range, or everything up to the current end) on the
FnApiRunner: records are grouped per table and UTC hour and written as files of about
``lake.target_file_mb`` (``WriteToLake(mode="grouped")``); no offsets are committed.

Live (unbounded, Prism or Flink) with a consumer group: files are written when each bundle finishes,
in the same fused stage as the read, so the reader commits a partition's offsets only after the
files holding those records are finalized (``WriteToLake(mode="bundle")``). Bundles last up to
``lake.flush_interval_s`` (capped at 60 s), which is also how stale the lake can be; run
``scanflow lake compact`` now and then to merge the small files.

Records that do not decode go to the dead-letter topic; nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import apache_beam as beam

from connectors.beam_kafka_decode import EVENT_SCHEMAS, DecodeRecords
from connectors.beam_kafka_sink import WriteToKafka
from connectors.beam_kafka_source import ReadFromKafka
from connectors.beam_lake import WriteToLake
from connectors.lake_settings import LakeSettings, lake_settings
from scanflow.config import Settings

ARCHIVE_GROUP = "scanflow-archive"


class ArchiveEvents(beam.PTransform):
    """Kafka records of the events topic -> lake files; dead letters to ``dead_letter_topic``.

    Input: :class:`connectors.beam_kafka_source.KafkaRecord`. Returns the written
    :class:`~connectors.parquet_lake.LakeFile` PCollection (empty in live mode).
    """

    def __init__(self, settings: Settings, root: str, lake: LakeSettings, *, live: bool,
                 dead_letter_topic: str | None = None, shards: int = 1):
        super().__init__()
        self._settings, self._root, self._lake, self._live = settings, root, lake, live
        self._dead_topic = dead_letter_topic or settings.topics.dead_letter
        self._shards = shards

    def expand(self, records):
        decoded, dead = records | "Decode" >> DecodeRecords(EVENT_SCHEMAS)
        _ = dead | "WriteDeadLetters" >> WriteToKafka(self._settings.kafka, self._dead_topic)
        return decoded | "WriteLake" >> WriteToLake(
            self._root, None, self._lake, mode="bundle" if self._live else "grouped", shards=self._shards)


@dataclass(frozen=True)
class ArchiveResult:
    """What a bounded archive run wrote."""

    files: int
    rows: int
    dead_letters: int


def run_archive(settings: Settings, *, root: str | None = None, topic: str | None = None,
                start: str = "earliest", stop: str | None = "end",
                start_offsets: Mapping[tuple[str, int], int] | None = None,
                stop_offsets: Mapping[tuple[str, int], int] | None = None,
                start_time_ms: int | None = None, stop_time_ms: int | None = None,
                group_id: str | None = None, dead_letter_topic: str | None = None,
                runner: str | None = None, extra_args: list[str] | None = None) -> ArchiveResult | None:
    """Archive the events topic into the lake and wait for the pipeline to finish.

    Bounded (default: from the earliest offsets to the current end) on the FnApiRunner unless
    ``runner`` says otherwise; returns an :class:`ArchiveResult` from the pipeline's metrics. With
    ``stop=None`` and no stop offsets or time, the read is live with ``group_id`` (default
    ``scanflow-archive``) starting from its committed offsets, on the configured streaming runner;
    that call returns only when the pipeline is cancelled, and returns None.
    """
    from pipelines.runners import pipeline_options

    lake = lake_settings(settings)
    root = root or str(lake.root_path())
    topic = topic or settings.topics.events
    live = stop is None and stop_offsets is None and stop_time_ms is None
    if live:
        read = ReadFromKafka(settings.kafka, topic, group_id=group_id or ARCHIVE_GROUP, start="committed",
                             max_bundle_s=min(lake.flush_interval_s, 60.0))
        options = pipeline_options(settings, streaming=True, runner=runner, extra=extra_args)
    else:
        read = ReadFromKafka(settings.kafka, topic, group_id=group_id, start=start,
                             stop=stop if stop_offsets is None and stop_time_ms is None else None,
                             start_offsets=start_offsets, stop_offsets=stop_offsets,
                             start_time_ms=start_time_ms, stop_time_ms=stop_time_ms)
        options = pipeline_options(settings, streaming=False, runner=runner or "fnapi", extra=extra_args)
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline
         | "ReadEvents" >> read
         | "Archive" >> ArchiveEvents(settings, root, lake, live=live, dead_letter_topic=dead_letter_topic))
    result = pipeline.run()
    result.wait_until_finish()
    if live:
        return None
    return ArchiveResult(files=_counter(result, "scanflow.lake", "files_written"),
                         rows=_counter(result, "scanflow.lake", "rows_written"),
                         dead_letters=_counter(result, "scanflow.kafka", "dead_letters"))


def _counter(result: Any, namespace: str, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(name))["counters"]
    return sum(c.committed if c.committed is not None else c.attempted for c in found)
