"""Process management of ``scanflow run``: the whole loop on one machine, start to clean stop.

Processes, each with its log in ``<run dir>/logs/``:

- ``prism``: one Prism job server (the binary built by ``scanflow infra prism``);
- ``scheduler``: :mod:`scanflow.loop.scheduler`, the live Beam scheduler submitted to that Prism,
  writing observations and decisions to the run's lake;
- ``agent-<k>``: ``scanflow agent`` processes in one consumer group on the run's commands topic.

Each run gets its own four topics (``<prefix>.<run id>.events`` ...), created from the declarative
topic list with the same partitions and configs, so a run never resumes another run's state. The
virtual clock starts when the scheduler job is running; at the end of the virtual period the agents
get SIGTERM first (they finish or hand back their commands), the scheduler is given a moment to
read the last events, then it and Prism are stopped. The events topic is then archived into the
lake (bounded, ``scanflow lake archive``), the lake summarised with DuckDB and ``scanflow report``
written. Nothing here imports Beam; Kafka and DuckDB code is imported inside the functions that
need it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

DAY_S = 86_400.0
#: First address of the synthetic world (``scanflow.world.model.BASE_ADDRESS``).
WORLD_BASE = ipaddress.IPv4Address("10.0.0.0")
TABLES = ("events", "scans", "observations", "decisions")


class LoopError(RuntimeError):
    """The loop could not start or a process died; the message names the log to read."""


@dataclass
class LoopSpec:
    """What one ``scanflow run`` does. Durations of the policy are compressed so that one virtual
    day takes ``day_seconds`` of wall time."""

    run_dir: Path
    lake_dir: Path
    report_dir: Path
    ips: int = 20_000
    days: float = 7.0
    day_seconds: float = 20.0
    agents: int = 2
    backend: str = "sim"
    allow: tuple[str, ...] = ()
    seed: int = 1
    rate: float = 0.0
    contact: str = ""
    keep_topics: bool = False
    report: bool = True
    #: Begin with a first pass over every address with the policy's initial (classification) set,
    #: spread over ``first_pass_window_s`` wall seconds (see :mod:`scanflow.loop.clock`).
    first_pass: bool = True
    first_pass_window_s: float = 0.0
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6])
    #: Global CLI arguments (``--config``, ``--set``) handed on to every child ``scanflow``.
    cli_args: tuple[str, ...] = ()
    config_file: str | None = None
    set_items: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        """Wall seconds per virtual second."""
        return self.day_seconds / DAY_S

    @property
    def sim(self) -> bool:
        return self.backend == "sim"

    def world_networks(self) -> list[ipaddress.IPv4Network]:
        """The synthetic world rounded up to whole /24 blocks (sweep commands are /24 ranges)."""
        blocks = math.ceil(self.ips / 256)
        last = WORLD_BASE + blocks * 256 - 1
        return list(ipaddress.summarize_address_range(WORLD_BASE, last))

    def scan_networks(self) -> list[str]:
        """What the agents may scan and the scheduler sweeps: the world (sim) or the allowlist."""
        if self.sim:
            return [str(n) for n in self.world_networks()]
        return list(self.allow)

    def addresses(self) -> int:
        """Addresses the run scans (the world's, or the allowlist's)."""
        return sum(ipaddress.ip_network(n, strict=False).num_addresses for n in self.scan_networks())

    def sweep_prefix(self) -> int:
        """/24 sweep blocks, or smaller when an allowlist entry is smaller than a /24."""
        return max([24] + [ipaddress.ip_network(a, strict=False).prefixlen for a in self.scan_networks()])


def plan_real_clock(spec: LoopSpec, settings):
    """The clock of a run on a real network (:func:`scanflow.loop.clock.plan_clock`): from the
    policy's port sets as the scheduler will build them, and the agents' settings."""
    from pipelines.policy_setup import build_policy
    from pipelines.settings import pipeline_settings
    from scanflow.loop.clock import AgentPace, ScanCosts, plan_clock

    policy = build_policy(settings, pipeline_settings(settings))
    sets = policy.port_sets
    largest = max([len(sets.unknown.ports), len(sets.standard.ports)]
                  + [len(ps.ports) for ps in policy.estimator.port_sets()])
    costs = ScanCosts(spec.addresses(), len(policy.initial_ports.ports), len(sets.silent.ports), largest)
    a = settings.agent
    pace = AgentPace(spec.agents, spec.rate or a.rate_pps, a.per_target_pps, spec.backend, a.concurrency,
                     a.connect_timeout_s, a.read_timeout_s, a.syn_retries)
    p = settings.policy
    return plan_clock(costs, pace, shortest_interval_h=min(p.ladder_hours[0], p.retry_interval_h),
                      sweep_interval_h=p.silent_interval_h)


@dataclass
class Proc:
    """One child process and its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    log: TextIO

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float, sig: int = signal.SIGTERM) -> int:
        """Signal, wait up to ``timeout_s``, then kill; returns the exit code."""
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        return self.popen.returncode

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Progress:
    """What the loop has done so far (one progress line)."""

    virtual_days: float = 0.0
    events: int = 0
    commands: int = 0
    lake_rows: int = 0

    def line(self, days: float) -> str:
        return (f"day {self.virtual_days:5.2f}/{days:g}  events {self.events:>11,}  "
                f"commands {self.commands:>9,}  lake rows {self.lake_rows:>10,}")


@dataclass
class LoopResult:
    """The outcome of a run: counts, wall time, the peak memory of every process, the summary."""

    run_id: str
    wall_s: float
    loop_wall_s: float
    progress: Progress
    peak_rss_kb: dict[str, int]
    summary: dict
    report_index: str = ""
    interrupted: bool = False


def proc_status_kb(pid: int, key: str) -> int:
    """``VmHWM`` / ``VmRSS`` of a process from /proc (kB; 0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Loop:
    """Runs one :class:`LoopSpec`; :meth:`run` blocks until the end of the virtual period."""

    def __init__(self, spec: LoopSpec, settings, *, echo: Callable[[str], None] = print,
                 progress_every_s: float = 2.0, tty: bool | None = None,
                 on_sample: Callable[["Loop", Progress], None] | None = None):
        self.spec, self.settings, self.echo = spec, settings, echo
        self.tty = sys.stderr.isatty() if tty is None else tty
        # Off a terminal every sample is a new line; fewer keep a log readable.
        self.progress_every_s = progress_every_s if self.tty else max(progress_every_s, 10.0)
        self.on_sample = on_sample
        self.procs: list[Proc] = []
        self.peak_kb: dict[str, int] = {}
        prefix = settings.topics.events.rsplit(".", 1)[0] if "." in settings.topics.events else "scanflow"
        base = f"{prefix}.run-{spec.run_id}"
        self.topics = {"events": f"{base}.events", "commands": f"{base}.commands",
                       "ip_state": f"{base}.ip-state", "dead_letter": f"{base}.dead-letter"}
        self.logs = spec.run_dir / "logs"
        self._lake_cache: dict[Path, int] = {}
        self._consumer = None
        #: True when an interrupted run left its topics for a later archive (see :meth:`archive_command`).
        self.kept_for_archive = False

    # ---- children -------------------------------------------------------------------------
    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Children report through their logs; an unbuffered stdout keeps those logs current.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, cmd: list[str]) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        log = open(log_path, "a", buffering=1)
        log.write(f"# {' '.join(cmd)}\n")
        # A new session: a Ctrl-C in the terminal reaches the orchestrator only, which then stops
        # the children in order (agents before the scheduler) instead of all at once.
        popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=self._child_env(), start_new_session=True)
        proc = Proc(name, popen, log_path, log)
        self.procs.append(proc)
        return proc

    def _scanflow(self, *args: str) -> list[str]:
        topic_sets = [f"--set=topics.{k}={v}" for k, v in self.topics.items()]
        return [sys.executable, "-m", "scanflow", *self.spec.cli_args, *topic_sets, *args]

    def _check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise LoopError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}:\n"
                                f"{proc.tail()}")

    def _sample_memory(self) -> None:
        for proc in self.procs:
            if proc.alive():
                self.peak_kb[proc.name] = max(self.peak_kb.get(proc.name, 0),
                                              proc_status_kb(proc.popen.pid, "VmHWM"))

    def rss_kb(self) -> dict[str, int]:
        """Current resident memory of every live child (kB)."""
        return {p.name: proc_status_kb(p.popen.pid, "VmRSS") for p in self.procs if p.alive()}

    # ---- steps ----------------------------------------------------------------------------
    def create_topics(self) -> None:
        """The run's four topics, with the partitions and configs of the declarative list."""
        from connectors.kafka_admin import admin_client, apply_topics, load_topic_specs

        names = dataclasses.replace(self.settings.topics, **self.topics)
        admin = admin_client(self.settings.kafka)
        try:
            apply_topics(admin, load_topic_specs(names), report=lambda line: None)
        finally:
            admin.close()

    def delete_topics(self) -> None:
        """Delete the run's topics that exist; never raises (a failure is reported, the run's own
        outcome is what the caller reports)."""
        admin = None
        try:
            from connectors.kafka_admin import admin_client

            admin = admin_client(self.settings.kafka)
            existing = set(admin.list_topics())
            names = [t for t in self.topics.values() if t in existing]
            if names:
                admin.delete_topics(names)
        except Exception as exc:  # noqa: BLE001 - leftover topics are harmless; say so and go on
            self.echo(f"run: could not delete the run's topics ({exc}); delete {self.topics['events']} etc. by hand")
        finally:
            if admin is not None:
                admin.close()

    def start_prism(self) -> str:
        """Start a Prism job server; returns its endpoint once it accepts connections."""
        import socket

        binary = Path(self.settings.beam.prism_location)
        if not binary.is_absolute():
            from scanflow.config import REPO_ROOT
            binary = REPO_ROOT / binary
        if not binary.is_file():
            raise LoopError(f"no Prism binary at {binary}; run `scanflow infra prism` (or `make setup`)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = self._spawn("prism", [str(binary), f"--job_port={port}", "--serve_http=false", "--log_level=info",
                                     "--log_kind=text", "--idle_shutdown_timeout=900s"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return f"127.0.0.1:{port}"
            except OSError:
                time.sleep(0.1)
        raise LoopError(f"prism did not listen on 127.0.0.1:{port} within 60 s; see {proc.log_path}")

    def start_scheduler(self, endpoint: str, start: float) -> None:
        """Submit the scheduler and wait until its job runs (the port sets are written by then)."""
        spec = self.spec
        ready = spec.run_dir / "scheduler.ready"
        ready.unlink(missing_ok=True)
        doc = {"config_file": spec.config_file, "set": list(spec.set_items),
               "topics": self.topics, "scale": spec.scale, "start": start,
               "sweep_ranges": spec.scan_networks(), "sweep_prefix": spec.sweep_prefix(),
               "group_id": f"scanflow-run-{spec.run_id}", "lake_dir": str(spec.lake_dir),
               "portset_dir": str(spec.run_dir / "portsets"), "job_endpoint": endpoint,
               "ready_file": str(ready), "first_pass": spec.first_pass,
               "first_pass_window_s": spec.first_pass_window_s}
        path = spec.run_dir / "scheduler.json"
        path.write_text(json.dumps(doc, indent=2))
        proc = self._spawn("scheduler", [sys.executable, "-m", "scanflow.loop.scheduler", str(path)])
        deadline = time.monotonic() + 180
        while not ready.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise LoopError(f"the scheduler did not start within 180 s; see {proc.log_path}")
            time.sleep(0.2)

    def wait_for_agents(self, timeout_s: float = 60.0) -> None:
        """Return once the agents' consumer group is stable with every agent in it (or after
        ``timeout_s``, saying so: the run goes on, its first commands may then run twice)."""
        from connectors.kafka_admin import admin_client

        group = f"scanflow-run-{self.spec.run_id}-agents"
        deadline = time.monotonic() + timeout_s
        admin = admin_client(self.settings.kafka)
        try:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    info = admin.describe_groups([group]).get(group) or {}
                except Exception:  # noqa: BLE001 - the group may not exist yet
                    info = {}
                state = info.get("group_state") or info.get("state")
                if state == "Stable" and len(info.get("members") or []) >= self.spec.agents:
                    return
                time.sleep(0.5)
        finally:
            admin.close()
        self.echo(f"run: the agents' group {group} did not settle within {timeout_s:.0f} s; going on")

    def start_agents(self, epoch_us: int) -> None:
        spec = self.spec
        # The scheduler publishes its named port sets here when it starts (after the agents).
        (spec.run_dir / "portsets").mkdir(parents=True, exist_ok=True)
        for k in range(spec.agents):
            args = ["agent", "--backend", spec.backend, "--group", f"scanflow-run-{spec.run_id}-agents",
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
            self._spawn(f"agent-{k}", self._scanflow(*args))

    # ---- progress ---------------------------------------------------------------------------
    def _offsets(self, topic: str) -> int:
        """Records in ``topic`` (sum of its partitions' end offsets)."""
        from connectors.kafka_io import make_consumer, topic_partitions

        if self._consumer is None:
            self._consumer = make_consumer(self.settings.kafka)
        tps = topic_partitions(self._consumer, [topic])
        return sum(self._consumer.end_offsets(tps).values())

    def lake_rows(self) -> int:
        """Rows in the lake's finished Parquet files (footers only, each file read once)."""
        import pyarrow.parquet as pq

        total = 0
        for table in TABLES:
            for path in (self.spec.lake_dir / table).glob("date=*/hour=*/*.parquet"):
                if path not in self._lake_cache:
                    try:
                        self._lake_cache[path] = pq.read_metadata(path).num_rows
                    except Exception:  # noqa: BLE001 - a file being written; count it next time
                        continue
                total += self._lake_cache[path]
        return total

    def sample(self, started: float) -> Progress:
        return Progress(virtual_days=(time.time() - started) / self.spec.day_seconds,
                        events=self._offsets(self.topics["events"]),
                        commands=self._offsets(self.topics["commands"]), lake_rows=self.lake_rows())

    def _show(self, progress: Progress, final: bool = False) -> None:
        line = progress.line(self.spec.days)
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            self.echo(line)

    def _drain_scheduler(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until the scheduler's group has committed up to the events' end."""
        from kafka import KafkaAdminClient

        from connectors.kafka_io import make_consumer, topic_partitions

        consumer = make_consumer(self.settings.kafka)
        admin = KafkaAdminClient(**self.settings.kafka.client_options())
        try:
            tps = topic_partitions(consumer, [self.topics["events"]])
            ends = consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                committed = admin.list_consumer_group_offsets(f"scanflow-run-{self.spec.run_id}")
                if all((committed.get(tp).offset if committed.get(tp) else 0) >= end for tp, end in ends.items()):
                    return
                time.sleep(0.5)
        finally:
            consumer.close()
            admin.close()

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        """Start everything, show progress until the virtual period ends, stop cleanly, archive,
        summarise and report.

        The run's topics are deleted at the end unless ``keep_topics``, whether the run ended or
        failed (a process died, the scheduler did not start): a failure raises :class:`LoopError`
        naming the log to read, after the children are stopped and the topics deleted. An
        interrupted run (Ctrl-C or SIGTERM of this process) stops within seconds: every child at
        once, no archive; its topics are kept so that no event is lost, and the command that
        archives them is printed.
        """
        restore = self._on_sigterm_interrupt()
        try:
            return self._run()
        except KeyboardInterrupt:
            # Interrupted outside the loop itself (while creating the topics, or a second Ctrl-C /
            # SIGTERM while stopping or archiving): the children are stopped by now.
            self.stop_all_quietly()
            raise LoopError(f"interrupted before the run could end cleanly; logs in {self.logs}") from None
        except BaseException:
            self.stop_all_quietly()
            raise
        finally:
            restore()
            if self._consumer is not None:
                try:
                    self._consumer.close()
                except Exception:  # noqa: BLE001 - closing a progress consumer must not hide the outcome
                    pass
                self._consumer = None
            if not self.spec.keep_topics and not self.kept_for_archive:
                self.delete_topics()

    def _on_sigterm_interrupt(self) -> Callable[[], None]:
        """SIGTERM of the orchestrator interrupts it like Ctrl-C (an orderly stop, the topics
        deleted) instead of killing it with its children left running. Returns the undo."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
        return lambda: signal.signal(signal.SIGTERM, previous)

    def stop_all_quietly(self) -> None:
        """:meth:`stop_all` when a failure is already on its way out: no stop step may replace it."""
        if not any(p.alive() for p in self.procs):
            return
        try:
            self.stop_all()
        except BaseException:  # noqa: BLE001 - stop_all killed what was left; the failure is reported
            pass

    def _run(self) -> LoopResult:
        spec = self.spec
        t0 = time.monotonic()
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        spec.lake_dir.mkdir(parents=True, exist_ok=True)
        self.echo(f"[2/7] topics {', '.join(self.topics.values())} ...")
        self.create_topics()
        interrupted = False
        progress = Progress()
        loop_started = time.monotonic()
        try:
            self.echo("[3/7] prism job server ...")
            endpoint = self.start_prism()
            start = float(int(time.time()))
            # The agents first, and the scheduler once their group has settled: an agent joining
            # while another already runs the first commands makes the group hand those commands to
            # it as well (both would scan the same block at once).
            self.echo(f"[4/7] {spec.agents} {spec.backend} agent(s) ...")
            self.start_agents(int(start) * 1_000_000)
            self.wait_for_agents()
            start = float(int(time.time())) if not spec.sim else start
            self.echo(f"[5/7] scheduler on Prism ({endpoint}) ...")
            self.start_scheduler(endpoint, start)
            # The virtual clock runs from the moment the scheduler's sweeps start.
            loop_started = time.monotonic() - (time.time() - start)
            period = spec.days * spec.day_seconds
            next_show = 0.0
            while True:
                self._check_alive()
                self._sample_memory()
                now = time.monotonic()
                if now >= next_show:
                    progress = self.sample(start)
                    progress.virtual_days = min(progress.virtual_days, spec.days)
                    self._show(progress)
                    if self.on_sample is not None:
                        self.on_sample(self, progress)
                    next_show = now + self.progress_every_s
                if time.time() - start >= period:
                    break
                time.sleep(0.25)
        except KeyboardInterrupt:
            interrupted = True
            self.echo("\nrun: interrupted; stopping the processes")
        finally:
            loop_wall = time.monotonic() - loop_started
            self._sample_memory()
            if interrupted:
                self.stop_fast()
            else:
                self.stop_all()
        if interrupted:
            # Stopped within seconds: the events stay in the run's topics (kept), nothing is
            # archived half-way; the lake holds the observations and decisions made so far.
            self.kept_for_archive = True
            self.echo(f"run: interrupted: its topics are kept so no event is lost; archive them with\n"
                      f"  {self.archive_command()}\n"
                      f"then delete the topics {', '.join(self.topics.values())}")
            return LoopResult(spec.run_id, time.monotonic() - t0, loop_wall, progress, dict(self.peak_kb), {},
                              "", True)
        progress = self.sample(start if "start" in locals() else time.time())
        progress.virtual_days = min(spec.days, loop_wall / spec.day_seconds)
        self._show(progress, final=True)
        self.echo(f"[7/7] lake: archiving {progress.events:,} event records ...")
        self.archive_events()
        progress.lake_rows = self.lake_rows()
        summary = summarize(spec.lake_dir, spec.scale)
        report_index = ""
        if spec.report and not interrupted:
            report_index = self.write_report()
        return LoopResult(spec.run_id, time.monotonic() - t0, loop_wall, progress, dict(self.peak_kb), summary,
                          report_index, interrupted)

    def stop_fast(self, timeout_s: float = 8.0) -> None:
        """An interrupted run's stop: SIGTERM to every child at once, the rest killed after
        ``timeout_s`` (the agents commit nothing unfinished, so their commands would run again; the
        lake's files appear only whole, by rename)."""
        for p in self.procs:
            if p.alive():
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            p.stop(max(0.1, deadline - time.monotonic()))

    def archive_command(self) -> str:
        """The command that archives this run's events into its lake later."""
        import shlex

        args = [*self.spec.cli_args, f"--set=topics.events={self.topics['events']}", "lake", "archive",
                "--lake", str(self.spec.lake_dir)]
        return "scanflow " + " ".join(shlex.quote(a) for a in args)

    def stop_all(self) -> None:
        """Agents first (SIGTERM: they finish or hand back their commands), then the scheduler once
        it has read the last events, then Prism. Whatever still lives afterwards (say, a second
        Ctrl-C cut the orderly stop short) is killed: the children run in their own sessions, so
        nothing else would end them."""
        try:
            self._stop_in_order()
        finally:
            for p in self.procs:
                if p.alive():
                    p.popen.kill()
                    p.popen.wait()

    def _stop_in_order(self) -> None:
        agents = [p for p in self.procs if p.name.startswith("agent-")]
        self.echo("\n[6/7] stopping: agents ..." if self.tty else "[6/7] stopping: agents ...")
        for p in agents:
            if p.alive():
                p.popen.send_signal(signal.SIGTERM)
        for p in agents:
            p.stop(60)
        scheduler = [p for p in self.procs if p.name == "scheduler"]
        if scheduler and scheduler[0].alive():
            try:
                self._drain_scheduler()
            except Exception:  # noqa: BLE001 - draining is a courtesy; stopping must go on
                pass
            # Bundles of the last events still finish after the commit; a short grace lets their
            # observations and decisions reach the lake before the job is cancelled.
            time.sleep(2.0)
        for p in scheduler:
            p.stop(60)
        for p in self.procs:
            if p.name == "prism":
                p.stop(30)

    def archive_events(self) -> None:
        """The run's events topic into the lake's events and scans tables (bounded, to the end)."""
        cmd = self._scanflow("lake", "archive", "--lake", str(self.spec.lake_dir))
        with open(self.logs / "archive.log", "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._child_env())
        if rc != 0:
            raise LoopError(f"archiving the events failed (exit {rc}); see {self.logs / 'archive.log'}")

    def write_report(self) -> str:
        cmd = [sys.executable, "-m", "scanflow", *self.spec.cli_args, "report", "--out", str(self.spec.report_dir),
               "--lake", str(self.spec.lake_dir)]
        with open(self.logs / "report.log", "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._child_env())
        if rc != 0:
            self.echo(f"run: the report failed (exit {rc}); see {self.logs / 'report.log'}")
            return ""
        return str(self.spec.report_dir / "index.html")


def summarize(lake_dir: Path, scale: float) -> dict:
    """The DuckDB summary of a run's lake: rows per table, responsive IPs, back-off distribution
    (latest step of each tracked IP, with its interval in virtual days) and traffic."""
    from connectors.duckdb_catalog import Catalog

    out: dict = {"tables": {}, "backoff": [], "traffic": {}}
    with Catalog(lake_dir) as cat:
        for name, c in cat.counts().items():
            out["tables"][name] = c["rows"]

        def one(sql: str):
            rows = cat.sql(sql).to_pylist()
            return rows[0] if rows else {}

        if out["tables"].get("events"):
            out["responsive_ips"] = one("SELECT count(DISTINCT ip) AS n FROM events").get("n", 0)
            out["open_ports"] = one("SELECT count(DISTINCT (ip, port)) AS n FROM events").get("n", 0)
        if out["tables"].get("decisions"):
            out["tracked_ips"] = one("SELECT count(DISTINCT ip) AS n FROM decisions WHERE status LIKE 'RESPONSIVE%'"
                                     ).get("n", 0)
            # Intervals are in compressed wall time in the lake; divide by the scale for virtual days.
            out["backoff"] = cat.sql(f"""
                WITH last AS (SELECT ip, arg_max(backoff_step, decided_at) AS step,
                                     arg_max(epoch_us(next_scan_at) - epoch_us(decided_at), decided_at) AS dt_us,
                                     arg_max(status, decided_at) AS status
                              FROM decisions GROUP BY ip)
                SELECT step, round(median(dt_us) / 1e6 / {scale} / 86400, 1) AS interval_days, count(*) AS ips
                FROM last WHERE status LIKE 'RESPONSIVE%' GROUP BY step ORDER BY step""").to_pylist()
        if out["tables"].get("scans"):
            # BIGINT casts: DuckDB sums integers into HUGEINT, which arrives as Decimal.
            out["traffic"] = one("""SELECT count(*) AS scans, CAST(sum(packets_sent) AS BIGINT) AS packets,
                                           CAST(sum(bytes_sent) AS BIGINT) AS bytes,
                                           CAST(sum(addresses_probed) AS BIGINT) AS addresses FROM scans""")
            out["scans_by_policy"] = cat.sql(
                "SELECT policy, count(*) AS scans, CAST(sum(packets_sent) AS BIGINT) AS packets FROM scans "
            "GROUP BY ALL ORDER BY 1"
            ).to_pylist()
    return out


def format_summary(result: LoopResult, spec: LoopSpec) -> list[str]:
    """The summary as lines for the terminal."""
    s, p = result.summary, result.progress
    lines = [f"summary of run {result.run_id} ({spec.backend}, "
             + (f"{spec.ips:,} IPs, " if spec.sim else f"allowlist {', '.join(spec.allow)}, ")
             + f"{p.virtual_days:.2f} virtual days in {result.loop_wall_s:.0f} s; total {result.wall_s:.0f} s)",
             f"  events {p.events:,}   commands {p.commands:,}   lake rows {p.lake_rows:,}"]
    lines.append("  lake tables: " + ", ".join(f"{k} {v:,}" for k, v in s.get("tables", {}).items()))
    if "responsive_ips" in s:
        lines.append(f"  responsive IPs {s['responsive_ips']:,} (open ip:port {s.get('open_ports', 0):,}); "
                     f"tracked by the scheduler {s.get('tracked_ips', 0):,}")
    if s.get("backoff"):
        lines.append("  back-off (latest step of each responsive IP):")
        for row in s["backoff"]:
            lines.append(f"    step {row['step']}  ~{row['interval_days']} d  {row['ips']:,} IPs")
    t = s.get("traffic") or {}
    if t.get("scans"):
        lines.append(f"  traffic: {t['scans']:,} scans, {t['addresses'] or 0:,} addresses, "
                     f"{t['packets'] or 0:,} packets, {(t['bytes'] or 0) / 1e6:,.1f} MB")
    if result.peak_rss_kb:
        lines.append("  peak memory (VmHWM): " + ", ".join(f"{k} {v / 1024:.0f} MB"
                                                           for k, v in sorted(result.peak_rss_kb.items())))
    if result.report_index:
        lines.append(f"  report: {result.report_index}")
    lines.append(f"  lake: {spec.lake_dir}   logs: {spec.run_dir / 'logs'}")
    return lines
