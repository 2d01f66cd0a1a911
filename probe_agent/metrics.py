"""Observability: counters and gauges, a Prometheus endpoint, a one-line progress display, JSON logs.

The agent's own counters are plain integers updated on its event loop; the Prometheus endpoint
(``prometheus_client``: a collector that reads them at each scrape, served by its HTTP server on a
daemon thread) and the progress line only read them, so no lock is needed for their consistency
beyond what a Prometheus scrape tolerates anyway. The metric names are documented in docs/AGENT.md.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from typing import Callable, TextIO


class AgentMetrics:
    """Every figure the agent exposes; names follow Prometheus conventions."""

    def __init__(self, agent_id: str = "", backend: str = "", clock: Callable[[], float] = time.monotonic):
        self.agent_id = agent_id
        self.backend = backend
        self.clock = clock
        self.started = clock()
        self.probes = 0
        self.packets = 0
        self.bytes = 0
        self.responses: dict[str, int] = defaultdict(int)   # by event kind
        self.statuses: dict[str, int] = defaultdict(int)    # by probe status
        self.errors: dict[str, int] = defaultdict(int)      # by error class
        self.commands: dict[str, int] = defaultdict(int)    # by outcome
        self.events_published = 0
        self.dones_published = 0
        self.dead_letters = 0
        self.backlog = 0
        self.inflight_commands = 0
        self.rate_cap = 0.0
        self.tracked_ips = 0
        self.exclusions_healthy = 1
        self._window: list[tuple[float, int]] = []

    def probe_rate(self) -> float:
        """Probes/s over the last ~5 seconds."""
        now = self.clock()
        self._window.append((now, self.probes))
        while len(self._window) > 2 and now - self._window[1][0] >= 5.0:
            self._window.pop(0)
        t0, p0 = self._window[0]
        return (self.probes - p0) / (now - t0) if now > t0 else 0.0

    def prometheus(self) -> str:
        """The text exposition format (``prometheus_client``'s, of :meth:`registry`)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry()).decode()

    def registry(self):
        """A ``prometheus_client`` registry whose one collector reads these figures at each scrape."""
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_AgentCollector(self))
        return registry

    def progress_line(self) -> str:
        """One line for a terminal."""
        responses = sum(self.responses.values())
        errors = sum(self.errors.values())
        return (f"probes {self.probes:,} ({self.probe_rate():,.0f}/s) | packets {self.packets:,} | "
                f"responses {responses:,} | errors {errors:,} | events {self.events_published:,} | "
                f"commands {self.inflight_commands} running, backlog {self.backlog:,}")


#: (name, kind, help, attribute, label of a per-key figure or "") of every figure, in exposition order.
_FIGURES = (
    ("scanflow_agent_probes_total", "counter", "Probes sent (connection attempts, SYNs).", "probes", ""),
    ("scanflow_agent_packets_total", "counter", "Packets sent, all probes and requests.", "packets", ""),
    ("scanflow_agent_bytes_total", "counter", "Bytes sent at the IP layer.", "bytes", ""),
    ("scanflow_agent_responses_total", "counter", "Responses seen, by event kind.", "responses", "kind"),
    ("scanflow_agent_probe_status_total", "counter", "Probes by how they ended.", "statuses", "status"),
    ("scanflow_agent_errors_total", "counter", "Errors, by class.", "errors", "class"),
    ("scanflow_agent_commands_total", "counter", "Commands handled, by outcome.", "commands", "outcome"),
    ("scanflow_agent_events_published_total", "counter", "ScanEvents sent to Kafka.", "events_published", ""),
    ("scanflow_agent_scan_done_published_total", "counter", "ScanDones sent to Kafka.", "dones_published", ""),
    ("scanflow_agent_dead_letters_total", "counter", "Records sent to the dead-letter topic.", "dead_letters", ""),
    ("scanflow_agent_backlog", "gauge", "Commands waiting in the agent's partitions (lag).", "backlog", ""),
    ("scanflow_agent_inflight_commands", "gauge", "Commands being executed.", "inflight_commands", ""),
    ("scanflow_agent_rate_cap_pps", "gauge", "The packets/s cap.", "rate_cap", ""),
    ("scanflow_agent_tracked_ips", "gauge", "IPs under per-IP tracking (skipped by sweeps).", "tracked_ips", ""),
    ("scanflow_agent_exclusions_healthy", "gauge", "1 while the exclusion list is readable.",
     "exclusions_healthy", ""),
)


class _AgentCollector:
    """A ``prometheus_client`` collector over :class:`AgentMetrics`: the agent's event loop keeps its
    plain integers (no lock on the hot path); a scrape reads them."""

    def __init__(self, metrics: AgentMetrics):
        self.m = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        base = ["agent", "backend"]
        ids = [self.m.agent_id, self.m.backend]
        for name, kind, help_, attr, label in _FIGURES:
            family = (CounterMetricFamily(name.removesuffix("_total"), help_, labels=base + ([label] if label else []))
                      if kind == "counter" else GaugeMetricFamily(name, help_, labels=base + ([label] if label else [])))
            value = getattr(self.m, attr)
            if label:
                for key, v in sorted(dict(value).items()):
                    family.add_metric(ids + [str(key)], v)
            else:
                family.add_metric(ids, value)
            yield family
        uptime = GaugeMetricFamily("scanflow_agent_uptime_seconds", "Seconds since the agent started.", labels=base)
        uptime.add_metric(ids, round(self.m.clock() - self.m.started, 3))
        yield uptime


class MetricsServer:
    """``GET /metrics`` in Prometheus text format (``prometheus_client``'s HTTP server, a daemon
    thread). ``port`` 0 picks a free port (:attr:`port`)."""

    def __init__(self, metrics: AgentMetrics, host: str = "127.0.0.1", port: int = 0):
        self.metrics, self.host, self._port = metrics, host, port
        self.server = None
        self._thread = None
        self.port = port

    def start(self) -> "MetricsServer":
        """Serve in the background."""
        from prometheus_client import start_http_server

        self.server, self._thread = start_http_server(self._port, addr=self.host, registry=self.metrics.registry())
        self.port = self.server.server_address[1]
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class ProgressDisplay:
    """Rewrites one terminal line (``\\r``) with :meth:`AgentMetrics.progress_line`."""

    def __init__(self, metrics: AgentMetrics, stream: TextIO = sys.stderr):
        self.metrics = metrics
        self.stream = stream
        self._width = 0

    def update(self) -> None:
        """Redraw the line."""
        line = self.metrics.progress_line()
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        """Blank the line (before a log line is written to the same terminal)."""
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def finish(self) -> None:
        """End the line so that later output starts on a fresh one."""
        if self._width:
            self.update()
            self.stream.write("\n")
            self.stream.flush()


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and any ``extra`` fields."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                out[key] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


class _ClearingHandler(logging.StreamHandler):
    """A stream handler that blanks the progress line first, so log lines never mix with it."""

    def __init__(self, stream: TextIO, display: ProgressDisplay):
        super().__init__(stream)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        self.display.clear()
        super().emit(record)


def setup_logging(fmt: str = "text", level: int = logging.INFO, stream: TextIO = sys.stderr,
                  display: ProgressDisplay | None = None) -> None:
    """Configure the ``scanflow`` loggers: JSON lines or plain text, on ``stream`` (sharing it with
    ``display``'s progress line when given)."""
    handler = logging.StreamHandler(stream) if display is None else _ClearingHandler(stream, display)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("scanflow")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
