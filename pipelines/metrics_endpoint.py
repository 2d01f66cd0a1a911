"""The scheduler's Prometheus endpoint: the Beam job's ``scanflow.*`` counters, read from the runner at
each scrape (``prometheus_client``).

Every counter ``scanflow.<group>/<name>`` of the job (:func:`pipelines.scheduler.counters`: decisions,
commands, dead letters, lake files and rows, ...) is exposed as ``scanflow_scheduler_<group>_<name>_total``;
``scanflow_scheduler_up`` is 1 while the job is running and ``scanflow_scheduler_scrape_errors_total``
counts scrapes the runner could not answer. Values are what the runner reports (committed where it
has them, else attempted), so a streaming job's counters may lag its work by a bundle.
"""

from __future__ import annotations

import re
from typing import Any, Callable

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(counter: str) -> str:
    """``scanflow.pipeline/decisions`` -> ``scanflow_scheduler_pipeline_decisions``."""
    group, _, name = counter.partition("/")
    group = group.removeprefix("scanflow").lstrip(".")
    return _NAME.sub("_", f"scanflow_scheduler_{group}_{name}".replace("__", "_"))


class SchedulerCollector:
    """Reads the job's counters when Prometheus scrapes. ``read`` returns ``{counter: value}``
    (default: :func:`pipelines.scheduler.counters` of ``result``)."""

    def __init__(self, result: Any, read: Callable[[Any], dict[str, int]] | None = None):
        self.result = result
        self._read = read
        self.errors = 0

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from pipelines.scheduler import counters

        state = str(getattr(self.result, "state", ""))
        up = GaugeMetricFamily("scanflow_scheduler_up", "1 while the scheduler's Beam job is running.")
        up.add_metric([], 1.0 if state.endswith("RUNNING") else 0.0)
        yield up
        try:
            values = (self._read or counters)(self.result)
        except Exception:  # noqa: BLE001 - a scrape must answer even when the runner does not
            self.errors += 1
            values = {}
        for counter, value in sorted(values.items()):
            family = CounterMetricFamily(metric_name(counter), f"Beam counter {counter} of the scheduler job.")
            family.add_metric([], value)
            yield family
        errors = CounterMetricFamily("scanflow_scheduler_scrape_errors", "Scrapes the runner could not answer.")
        errors.add_metric([], self.errors)
        yield errors


def start_metrics_server(result: Any, host: str = "127.0.0.1", port: int = 0):
    """Serve ``GET /metrics`` for the job ``result`` on a daemon thread; returns the HTTP server
    (``server_address[1]`` is the port, ``shutdown()`` stops it)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(result))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
