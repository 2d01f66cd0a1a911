"""What ``scanflow run`` starts, and with which arguments:

- ``prism``: one Prism job server (the binary built by ``scanflow infra prism``);
- ``scheduler``: :mod:`scanflow.loop.scheduler`, the live Beam scheduler submitted to that Prism,
  writing observations and decisions to the run's lake (``scheduler-<j>``: job ``j`` of several,
  each owning a share of the events partitions, ``scanflow run --scheduler-jobs``);
- ``agent-<k>``: ``scanflow agent`` processes in one consumer group on the run's commands topic;

and after the virtual period ``scanflow lake archive`` (the events topic into the lake) and
``scanflow report``. Nothing here imports Beam.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from scanflow.loop.processes import Children, child_env
from scanflow.loop.spec import LoopError, LoopSpec
from scanflow.loop.topics import RunTopics


def scanflow_command(spec: LoopSpec, topics: RunTopics, *args: str) -> list[str]:
    """A child ``scanflow`` with the run's CLI arguments, pointed at the run's topics."""
    return [sys.executable, "-m", "scanflow", *spec.cli_args, *topics.set_args(), *args]


def start_prism(children: Children, settings) -> str:
    """Start a Prism job server; returns its endpoint once it accepts connections."""
    import socket

    binary = Path(settings.beam.prism_location)
    if not binary.is_absolute():
        from scanflow.config import REPO_ROOT
        binary = REPO_ROOT / binary
    if not binary.is_file():
        raise LoopError(f"no Prism binary at {binary}; run `scanflow infra prism` (or `make setup`)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = children.spawn("prism", [str(binary), f"--job_port={port}", "--serve_http=false", "--log_level=info",
                                    "--log_kind=text", "--idle_shutdown_timeout=900s"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise LoopError(f"prism did not listen on 127.0.0.1:{port} within 60 s; see {proc.log_path}")


def scheduler_names(jobs: int) -> list[str]:
    """The scheduler children's names: ``scheduler`` alone, or ``scheduler-0`` .. ``scheduler-<n-1>``."""
    return ["scheduler"] if jobs <= 1 else [f"scheduler-{j}" for j in range(jobs)]


def start_scheduler(children: Children, spec: LoopSpec, topics: RunTopics, endpoint: str, start: float) -> None:
    """Submit the scheduler and wait until its job runs (the port sets are written by then).

    With ``spec.scheduler_jobs`` > 1, that many jobs on the same Prism, job ``j`` owning the events
    partitions ``j/n`` (:mod:`pipelines.partitions`): its addresses' rounds and states, its share of
    the sweep blocks, one consumer group committing each partition once. Each job has its spec,
    ready file and log under its own name (:func:`scheduler_names`)."""
    names = scheduler_names(spec.scheduler_jobs)
    waiting = []
    for j, name in enumerate(names):
        ready = spec.run_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        doc = {"config_file": spec.config_file, "set": list(spec.set_items),
               "topics": topics.names, "scale": spec.scale, "start": start,
               "sweep_ranges": spec.scan_networks(), "sweep_prefix": spec.sweep_prefix(),
               "group_id": topics.scheduler_group, "lake_dir": str(spec.lake_dir),
               "portset_dir": str(spec.run_dir / "portsets"), "job_endpoint": endpoint,
               "ready_file": str(ready), "first_pass": spec.first_pass,
               "first_pass_window_s": spec.first_pass_window_s,
               "partitions": f"{j}/{len(names)}" if len(names) > 1 else ""}
        path = spec.run_dir / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2))
        waiting.append((ready, children.spawn(name, [sys.executable, "-m", "scanflow.loop.scheduler", str(path)])))
    deadline = time.monotonic() + 180 * len(names)
    for ready, proc in waiting:
        while not ready.exists():
            children.check_alive()
            if time.monotonic() > deadline:
                raise LoopError(f"the scheduler did not start within {180 * len(names)} s; see {proc.log_path}")
            time.sleep(0.2)


def start_agents(children: Children, spec: LoopSpec, topics: RunTopics, epoch_us: int) -> None:
    """``spec.agents`` agents in the agents' group; a sim agent's world starts at ``epoch_us``."""
    # The scheduler publishes its named port sets here when it starts (after the agents).
    (spec.run_dir / "portsets").mkdir(parents=True, exist_ok=True)
    spec.agent_metrics = {}
    for k in range(spec.agents):
        # Each agent's Prometheus endpoint on a free loopback port: the run's health on the dashboard.
        port = _free_port()
        spec.agent_metrics[f"agent-{k}"] = f"http://127.0.0.1:{port}/metrics"
        args = ["agent", "--backend", spec.backend, "--group", topics.agents_group, "--metrics-port", str(port),
                "--agent-id", f"{spec.backend}-agent-{k}", "--no-progress", "--seed", str(spec.seed + k),
                "--set", f"portset_dir={spec.run_dir / 'portsets'}", "--set", "commit_interval_s=0.5"]
        for net in spec.scan_networks():
            args += ["--allow", net]
        if spec.sim:
            # Virtual time: the sim agent answers at each command's due time, as fast as the
            # world can be queried, so the rate cap only spaces the probes' timestamps.
            rate = spec.rate or 1_000_000
            args += ["--rate", str(rate), "--per-target-rate", str(min(1000.0, rate)),
                     "--set", f"sim_n_ips={spec.ips}", "--set", f"sim_seed={spec.seed}",
                     "--set", f"sim_epoch_us={epoch_us}",
                     # The world's devices live in the same compressed time as the policy.
                     "--set", f"sim_time_scale={1 / spec.scale!r}",
                     "--set", f"sim_horizon_days={max(spec.days + 1, 2)}"]
        else:
            if spec.rate:
                args += ["--rate", str(spec.rate)]
            if spec.contact:
                args += ["--contact", spec.contact]
        children.spawn(f"agent-{k}", scanflow_command(spec, topics, *args))


# ---- after the virtual period -------------------------------------------------------------------
def archive_events(spec: LoopSpec, topics: RunTopics, logs: Path) -> None:
    """The run's events topic into the lake's events and scans tables (bounded, to the end)."""
    cmd = scanflow_command(spec, topics, "lake", "archive", "--lake", str(spec.lake_dir))
    with open(logs / "archive.log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    if rc != 0:
        raise LoopError(f"archiving the events failed (exit {rc}); see {logs / 'archive.log'}")


def archive_command(spec: LoopSpec, topics: RunTopics) -> str:
    """The command that archives this run's events into its lake later."""
    args = [*spec.cli_args, f"--set=topics.events={topics.names['events']}", "lake", "archive",
            "--lake", str(spec.lake_dir)]
    return "scanflow " + " ".join(shlex.quote(a) for a in args)


def _free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def scrape_agent(url: str, timeout_s: float = 1.0) -> dict[str, float] | None:
    """The figures of one agent's Prometheus endpoint the dashboard shows (summed over labels), or
    None when it does not answer."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {key: 0.0 for key in AGENT_FIGURES}     # a family without samples (no error yet) is a 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name.removeprefix("scanflow_agent_")
            if key in AGENT_FIGURES:
                out[key] = out.get(key, 0.0) + sample.value
    return out


#: The agent figures ``_run.json`` carries for the dashboard.
AGENT_FIGURES = ("probes_total", "responses_total", "errors_total", "events_published_total",
                 "dead_letters_total", "backlog", "inflight_commands", "exclusions_healthy")


def start_dashboard(spec: LoopSpec, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
    """``scanflow serve`` on the run's lake, as a process of its own session: it is not one of the
    run's children, so it neither holds up the run's end nor stops with it; it keeps serving the
    finished lake until it is killed. ``port`` 0 picks a free one. Returns its address and pid."""
    if port == 0:
        port = _free_port(host)
    logs = spec.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec.lake_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "scanflow", *spec.cli_args, "serve", "--lake", str(spec.lake_dir),
           "--host", host, "--port", str(port)]
    with open(logs / "dashboard.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(), start_new_session=True)
    return f"http://{host}:{port}/", proc.pid


def write_report(spec: LoopSpec, logs: Path, echo: Callable[[str], None]) -> str:
    """``scanflow report`` of the run's lake; returns its index page, or "" (said) when it failed."""
    cmd = [sys.executable, "-m", "scanflow", *spec.cli_args, "report", "--out", str(spec.report_dir),
           "--lake", str(spec.lake_dir)]
    with open(logs / "report.log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    if rc != 0:
        echo(f"run: the report failed (exit {rc}); see {logs / 'report.log'}")
        return ""
    return str(spec.report_dir / "index.html")
