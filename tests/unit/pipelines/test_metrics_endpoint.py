"""The scheduler's Prometheus endpoint exposes a real Beam job's ``scanflow.*`` counters under
``scanflow_scheduler_*`` names, over HTTP on loopback (prometheus_client's server)."""

from __future__ import annotations

import urllib.request

import apache_beam as beam
from prometheus_client.parser import text_string_to_metric_families

from pipelines.metrics_endpoint import metric_name, start_metrics_server
from pipelines.scheduler import tally


def test_metric_names_follow_the_counters():
    assert metric_name("scanflow.pipeline/decisions") == "scanflow_scheduler_pipeline_decisions"
    assert metric_name("scanflow.kafka/dead_letters") == "scanflow_scheduler_kafka_dead_letters"


def test_the_endpoint_serves_the_jobs_counters():
    p = beam.Pipeline(runner="FnApiRunner")
    tally(p | beam.Create(range(7)), "decisions")
    result = p.run()
    result.wait_until_finish()
    server = start_metrics_server(result, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["scanflow_scheduler_pipeline_decisions_total"] == 7
    assert samples["scanflow_scheduler_up"] == 0          # the bounded job has finished
    assert samples["scanflow_scheduler_scrape_errors_total"] == 0
