"""Observability: counters and gauges, a Prometheus endpoint, a one-line progress display, JSON logs.

The agent's own counters are plain integers updated on its event loop; the HTTP endpoint (a daemon
thread) and the progress line only read them, so no lock is needed for their consistency beyond
what a Prometheus scrape tolerates anyway.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
        """The text exposition format."""
        labels = f'agent="{_esc(self.agent_id)}",backend="{_esc(self.backend)}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, values: dict[str, float] | float, label: str = "") -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            if isinstance(values, dict):
                for key, value in sorted(values.items()):
                    lines.append(f'{name}{{{labels},{label}="{_esc(key)}"}} {value}')
            else:
                lines.append(f"{name}{{{labels}}} {values}")

        metric("scanflow_agent_probes_total", "counter", "Probes sent (connection attempts, SYNs).", self.probes)
        metric("scanflow_agent_packets_total", "counter", "Packets sent, all probes and requests.", self.packets)
        metric("scanflow_agent_bytes_total", "counter", "Bytes sent at the IP layer.", self.bytes)
        metric("scanflow_agent_responses_total", "counter", "Responses seen, by event kind.",
               dict(self.responses), "kind")
        metric("scanflow_agent_probe_status_total", "counter", "Probes by how they ended.",
               dict(self.statuses), "status")
        metric("scanflow_agent_errors_total", "counter", "Errors, by class.", dict(self.errors), "class")
        metric("scanflow_agent_commands_total", "counter", "Commands handled, by outcome.",
               dict(self.commands), "outcome")
        metric("scanflow_agent_events_published_total", "counter", "ScanEvents sent to Kafka.",
               self.events_published)
        metric("scanflow_agent_scan_done_published_total", "counter", "ScanDones sent to Kafka.",
               self.dones_published)
        metric("scanflow_agent_dead_letters_total", "counter", "Records sent to the dead-letter topic.",
               self.dead_letters)
        metric("scanflow_agent_backlog", "gauge", "Commands waiting in the agent's partitions (lag).",
               self.backlog)
        metric("scanflow_agent_inflight_commands", "gauge", "Commands being executed.", self.inflight_commands)
        metric("scanflow_agent_rate_cap_pps", "gauge", "The packets/s cap.", self.rate_cap)
        metric("scanflow_agent_tracked_ips", "gauge", "IPs under per-IP tracking (skipped by sweeps).",
               self.tracked_ips)
        metric("scanflow_agent_exclusions_healthy", "gauge", "1 while the exclusion list is readable.",
               self.exclusions_healthy)
        metric("scanflow_agent_uptime_seconds", "gauge", "Seconds since the agent started.",
               round(self.clock() - self.started, 3))
        return "\n".join(lines) + "\n"

    def progress_line(self) -> str:
        """One line for a terminal."""
        responses = sum(self.responses.values())
        errors = sum(self.errors.values())
        return (f"probes {self.probes:,} ({self.probe_rate():,.0f}/s) | packets {self.packets:,} | "
                f"responses {responses:,} | errors {errors:,} | events {self.events_published:,} | "
                f"commands {self.inflight_commands} running, backlog {self.backlog:,}")


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """``GET /metrics`` in Prometheus text format, served from a daemon thread."""

    def __init__(self, metrics: AgentMetrics, host: str = "127.0.0.1", port: int = 0):
        outer = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = outer.prometheus().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes are not log lines
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    def start(self) -> "MetricsServer":
        """Serve in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
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
