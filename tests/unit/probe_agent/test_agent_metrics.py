"""Observability: Prometheus text over HTTP, the progress line, JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import urllib.request

from probe_agent.metrics import AgentMetrics, JsonFormatter, MetricsServer, ProgressDisplay, setup_logging


def sample() -> AgentMetrics:
    now = [100.0]
    m = AgentMetrics("agent-1", "connect", clock=lambda: now[0])
    m.probe_rate()
    m.probes, m.packets, m.bytes = 5000, 5200, 312_000
    m.responses["BANNER"] += 7
    m.statuses["closed"] += 4990
    m.errors["socket"] += 1
    m.commands["complete"] += 3
    m.backlog, m.inflight_commands, m.rate_cap = 12, 2, 1000.0
    now[0] = 105.0
    return m


def test_prometheus_text_has_every_figure_with_labels():
    from prometheus_client.parser import text_string_to_metric_families

    text = sample().prometheus()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    labels = (("agent", "agent-1"), ("backend", "connect"))
    assert samples[("scanflow_agent_probes_total", labels)] == 5000
    assert samples[("scanflow_agent_responses_total", tuple(sorted(labels + (("kind", "BANNER"),))))] == 7
    assert samples[("scanflow_agent_errors_total", tuple(sorted(labels + (("class", "socket"),))))] == 1
    assert samples[("scanflow_agent_backlog", labels)] == 12
    assert samples[("scanflow_agent_uptime_seconds", labels)] == 5
    lines = set(text.splitlines())
    assert "# TYPE scanflow_agent_probes_total counter" in lines and "# TYPE scanflow_agent_backlog gauge" in lines
    # every documented name (docs/AGENT.md) is there
    for name in ("probes_total", "packets_total", "bytes_total", "responses_total", "probe_status_total",
                 "errors_total", "commands_total", "events_published_total", "scan_done_published_total",
                 "dead_letters_total", "backlog", "inflight_commands", "rate_cap_pps", "tracked_ips",
                 "exclusions_healthy", "uptime_seconds"):
        assert f"# TYPE scanflow_agent_{name} " in text, name


def test_metrics_endpoint_serves_the_text_on_loopback():
    m = sample()
    server = MetricsServer(m, "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
        assert body == m.prometheus()         # the clock is frozen, so even the uptime matches
        assert "scanflow_agent_probes_total" in body
    finally:
        server.stop()


def test_progress_line_shows_rate_responses_errors_and_backlog():
    m = sample()
    line = m.progress_line()
    assert "probes 5,000 (1,000/s)" in line and "responses 7" in line and "errors 1" in line
    assert "backlog 12" in line
    out = io.StringIO()
    display = ProgressDisplay(m, out)
    display.update()
    display.finish()
    assert out.getvalue().startswith("\r") and out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_json_logs_are_one_object_per_line_with_extra_fields():
    out = io.StringIO()
    root = logging.getLogger("scanflow")
    saved = root.handlers[:], root.propagate, root.level
    try:
        setup_logging("json", stream=out)
        logging.getLogger("scanflow.agent").info("command %s done", "c-1", extra={"command_id": "c-1"})
    finally:
        root.handlers[:], root.propagate, root.level = saved[0], saved[1], saved[2]
    record = json.loads(out.getvalue().splitlines()[-1])
    assert record["msg"] == "command c-1 done" and record["command_id"] == "c-1" and record["level"] == "info"
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_log_lines_blank_the_progress_line_first():
    out = io.StringIO()
    display = ProgressDisplay(sample(), out)
    root = logging.getLogger("scanflow")
    saved = root.handlers[:], root.propagate, root.level
    try:
        setup_logging("text", stream=out, display=display)
        display.update()
        logging.getLogger("scanflow.agent").warning("a log line")
    finally:
        root.handlers[:], root.propagate, root.level = saved[0], saved[1], saved[2]
    text = out.getvalue()
    drawn = text.index("probes 5,000")
    blanked = text.index("\r" + " " * len(sample().progress_line()) + "\r")
    assert drawn < blanked < text.index("a log line")
