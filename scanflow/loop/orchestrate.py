"""The outline of ``scanflow run``: the whole loop on one machine, start to clean stop.

The run's topics are created (:mod:`scanflow.loop.topics`); a Prism job server, the agents and then
the scheduler are started (:mod:`scanflow.loop.launch`), each a child process with its log in
``<run dir>/logs/`` (:mod:`scanflow.loop.processes`). The virtual clock starts when the scheduler job
is running; a progress line is shown until the end of the virtual period
(:mod:`scanflow.loop.progress`). Then the agents get SIGTERM first (they finish or hand back their
commands), the scheduler is given a moment to read the last events, then it and Prism are stopped.
The events topic is then archived into the lake (bounded, ``scanflow lake archive``), the lake
summarised with DuckDB (:mod:`scanflow.loop.summary`) and ``scanflow report`` written. Nothing here
imports Beam; Kafka and DuckDB code is imported inside the functions that need it.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from connectors.lake_meta import RunMeta, write_run_meta
from scanflow.loop.launch import (archive_command, archive_events, scrape_agent, start_agents, start_prism,
                                  scheduler_names, start_scheduler, write_report)
from scanflow.loop.processes import Children, Proc, sigterm_interrupts
from scanflow.loop.progress import Progress, ProgressMeter
from scanflow.loop.spec import LoopError, LoopSpec
from scanflow.loop.summary import LoopResult, summarize
from scanflow.loop.topics import RunTopics


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
        self.topics = RunTopics(settings, spec.run_id)
        self.logs = spec.run_dir / "logs"
        self.children = Children(self.logs, announce_stop=self._announce_stop,
                                 drain_scheduler=self.topics.drain_scheduler)
        self.meter = ProgressMeter(spec, self.topics, echo, self.tty)
        self.progress = Progress()
        #: The dashboard's address when ``scanflow run`` started one (written into ``_run.json``).
        self.dashboard_url = ""
        #: True when an interrupted run left its topics for a later archive (see :func:`archive_command`).
        self.kept_for_archive = False

    @property
    def procs(self) -> list[Proc]:
        """The child processes started so far."""
        return self.children.procs

    def rss_kb(self) -> dict[str, int]:
        """Current resident memory of every live child (kB)."""
        return self.children.rss_kb()

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
        restore = sigterm_interrupts()
        try:
            return self._run()
        except KeyboardInterrupt:
            # Interrupted outside the loop itself (while creating the topics, or a second Ctrl-C /
            # SIGTERM while stopping or archiving): the children are stopped by now.
            self.children.stop_all_quietly()
            raise LoopError(f"interrupted before the run could end cleanly; logs in {self.logs}") from None
        except BaseException:
            self.children.stop_all_quietly()
            raise
        finally:
            restore()
            self.topics.close()
            if not self.spec.keep_topics and not self.kept_for_archive:
                self.topics.delete(self.echo)

    def _run(self) -> LoopResult:
        spec = self.spec
        t0 = time.monotonic()
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        spec.lake_dir.mkdir(parents=True, exist_ok=True)
        self.echo(f"[2/7] topics {', '.join(self.topics.names.values())} ...")
        self.topics.create()
        interrupted = False
        self.progress = Progress()
        loop_started = time.monotonic()
        try:
            start = self._start_children()
            self._write_meta(start, "running")
            # The virtual clock runs from the moment the scheduler's sweeps start.
            loop_started = time.monotonic() - (time.time() - start)
            self._show_progress_until_the_end(start)
        except KeyboardInterrupt:
            interrupted = True
            self.echo("\nrun: interrupted; stopping the processes")
        finally:
            loop_wall = time.monotonic() - loop_started
            self.children.sample_memory()
            if interrupted:
                self.children.stop_fast()
            else:
                self.children.stop_all()
        if interrupted:
            return self._keep_topics_for_archive(t0, loop_wall)
        return self._archive_summarise_report(t0, loop_wall, start)

    def _start_children(self) -> float:
        """[3/7] Prism, [4/7] the agents, [5/7] the scheduler; returns the wall time (whole
        seconds) the virtual clock starts from."""
        spec = self.spec
        self.echo("[3/7] prism job server ...")
        endpoint = start_prism(self.children, self.settings)
        start = float(int(time.time()))
        # The agents first, and the scheduler once their group has settled: an agent joining
        # while another already runs the first commands makes the group hand those commands to
        # it as well (both would scan the same block at once).
        self.echo(f"[4/7] {spec.agents} {spec.backend} agent(s) ...")
        start_agents(self.children, spec, self.topics, int(start) * 1_000_000)
        self.topics.wait_for_agents(spec.agents, self.children.check_alive, self.echo)
        start = float(int(time.time())) if not spec.sim else start
        jobs = f"{spec.scheduler_jobs} scheduler jobs" if spec.scheduler_jobs > 1 else "scheduler"
        self.echo(f"[5/7] {jobs} on Prism ({endpoint}) ...")
        start_scheduler(self.children, spec, self.topics, endpoint, start)
        return start

    def _show_progress_until_the_end(self, start: float) -> None:
        """Watch the children and show :attr:`progress` until the virtual period has passed."""
        spec = self.spec
        period = spec.days * spec.day_seconds
        next_show = 0.0
        while True:
            self.children.check_alive()
            self.children.sample_memory()
            now = time.monotonic()
            if now >= next_show:
                self.progress = self.meter.sample(start)
                self.progress.virtual_days = min(self.progress.virtual_days, spec.days)
                self.meter.show(self.progress)
                self._write_meta(start, "running")
                if self.on_sample is not None:
                    self.on_sample(self, self.progress)
                next_show = now + self.progress_every_s
            if time.time() - start >= period:
                break
            time.sleep(0.25)

    def _write_meta(self, start: float, status: str) -> None:
        """``<lake>/_run.json``: what made the lake, its compressed clock and the progress so far
        (read by the report, ``scanflow hosts`` and the dashboard)."""
        spec, p = self.spec, self.progress
        health = self.topics.health()
        if status != "running":
            health.pop("scheduler_lag", None)   # the scheduler has stopped: its lag means nothing now
        processes = {proc.name: "running" if proc.alive() else f"exited {proc.popen.returncode}"
                     for proc in self.children.procs}
        if status == "running":
            health["scheduler_metrics"] = self._scheduler_metrics_url()
            self._agents = {}
            for name, url in spec.agent_metrics.items():
                figures = scrape_agent(url)
                self._agents[name] = {"metrics": url, "answering": int(figures is not None), **(figures or {})}
        # the agents' last figures (they have stopped once the run is done)
        health["agents"] = dict(getattr(self, "_agents", {}))
        meta = RunMeta(run_id=spec.run_id, backend=spec.backend, policy=self.settings.policy.name,
                       ips=spec.addresses(), days=spec.days, day_seconds=spec.day_seconds, start=start,
                       agents=spec.agents, networks=spec.scan_networks(), status=status,
                       progress={"virtual_days": round(p.virtual_days, 3), "events": p.events,
                                 "commands": p.commands, "lake_rows": p.lake_rows, **health,
                                 "processes": processes},
                       dashboard=self.dashboard_url)
        try:
            write_run_meta(spec.lake_dir, meta)
        except OSError as exc:  # a report's context, never a reason to stop the run
            self.echo(f"run: warning: could not write {spec.lake_dir / '_run.json'}: {exc}")

    def _scheduler_metrics_url(self) -> str:
        """The (first) scheduler job's Prometheus endpoint, as its ready file names it ("" if none)."""
        try:
            text = (self.spec.run_dir / f"{scheduler_names(self.spec.scheduler_jobs)[0]}.ready").read_text()
        except OSError:
            return ""
        return next((line.split(" ", 1)[1].strip() for line in text.splitlines() if line.startswith("metrics ")), "")

    def _announce_stop(self) -> None:
        self.echo("\n[6/7] stopping: agents ..." if self.tty else "[6/7] stopping: agents ...")

    def _keep_topics_for_archive(self, t0: float, loop_wall: float) -> LoopResult:
        """An interrupted run's end: stopped within seconds, the events stay in the run's topics
        (kept), nothing is archived half-way; the lake holds the observations and decisions made
        so far."""
        self.kept_for_archive = True
        self.echo(f"run: interrupted: its topics are kept so no event is lost; archive them with\n"
                  f"  {archive_command(self.spec, self.topics)}\n"
                  f"then delete the topics {', '.join(self.topics.names.values())}")
        return LoopResult(self.spec.run_id, time.monotonic() - t0, loop_wall, self.progress,
                          dict(self.children.peak_kb), {}, "", True)

    def _archive_summarise_report(self, t0: float, loop_wall: float, start: float) -> LoopResult:
        """[7/7] The final progress line, the events archived into the lake, its summary, the report."""
        spec = self.spec
        progress = self.meter.sample(start)
        progress.virtual_days = min(spec.days, loop_wall / spec.day_seconds)
        self.meter.show(progress, final=True)
        self.echo(f"[7/7] lake: archiving {progress.events:,} event records ...")
        archive_events(spec, self.topics, self.logs)
        progress.lake_rows = self.meter.lake_rows()
        self.progress = progress
        summary = summarize(spec.lake_dir, spec.scale)
        self._write_meta(start, "done")
        report_index = ""
        if spec.report:
            report_index = write_report(spec, self.logs, self.echo)
        return LoopResult(spec.run_id, time.monotonic() - t0, loop_wall, progress, dict(self.children.peak_kb),
                          summary, report_index, False)
