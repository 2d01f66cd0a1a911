"""The agent core: commands in (a consumer group), probes out, events back, offsets committed last.

Delivery: a command's offset is committed only after every record it produced (ScanEvents,
ScanDones, dead letters) was acknowledged by Kafka (``acks=all``). The commit step takes the
contiguous prefix of finished commands per partition, flushes the producer, then commits, so a crash
at any point re-executes the unfinished commands; results are never lost (resent events keep their
ids). A flush that fails stops the agent with an error and commits nothing.

Stop: the first SIGTERM/SIGINT stops taking commands and gives running ones ``stop_grace_s`` to
finish; what is still running then is abandoned: its targets end with a ScanDone ABORTED, which is
committed like any result (the scheduler decides when to scan again). A second signal abandons at
once.

Here: :class:`Agent`, one command's execution and the consumer-group loop. Its parts live beside it:
:mod:`probe_agent.intake` (records in: decoding, duplicates, refusals, dead letters),
:mod:`probe_agent.rangeguard` (one scan of a range at a time), :mod:`probe_agent.group` (the group's
consumer, rebalances, the stale empty assignment) and :mod:`probe_agent.offsets` (finished offsets
and the commit).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any, Callable

from connectors.avro_codec import default_codec
from connectors.kafka_io import DeliveryError
from probe_agent.backends import Backend, make_backend
from probe_agent.group import CommandsConsumer, EmptyAssignmentRejoin, rebalance_listener
from probe_agent.intake import CommandIntake, NotStarted
from probe_agent.job import CommandRun, PortSetCatalog, Prepared, TargetTally, prepare
from probe_agent.metrics import AgentMetrics
from probe_agent.offsets import OffsetTracker, commit_finished, finished_offsets, partition_of
from probe_agent.publisher import EventPublisher
from probe_agent.rangeguard import RangeGuard
from probe_agent.ratelimit import PolitenessCap, TokenBucket
from probe_agent.safety import Allowlist, ExclusionList, Refusal, TrackedIps
from probe_agent.settings import AgentSettings
from scanflow.config import ConfigError, KafkaSettings, TopicsSettings, resolve_path

log = logging.getLogger("scanflow.agent")


class Agent:
    """A probe agent: run :meth:`run` for the consumer-group loop, or :meth:`execute` for one
    command (standalone scans, tests)."""

    def __init__(self, settings: AgentSettings, kafka: KafkaSettings, topics: TopicsSettings, *,
                 backend: Backend | None = None, publisher: EventPublisher | None = None,
                 metrics: AgentMetrics | None = None, tracked: TrackedIps | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings.validate()
        self.kafka, self.topics = kafka, topics
        self.agent_id = settings.resolved_agent_id()
        self.clock = clock
        self.backend = backend or make_backend(settings)
        self.metrics = metrics or AgentMetrics(self.agent_id, settings.backend, clock)
        self.metrics.rate_cap = settings.rate_pps
        self.publisher = publisher or EventPublisher(kafka, topics, self.agent_id)
        self.allowlist = Allowlist(settings.allowed_networks())
        self.exclusions = ExclusionList(resolve_path(settings.exclude_file) if settings.exclude_file else None)
        self.tracked = tracked if tracked is not None else TrackedIps()
        self.catalog = PortSetCatalog(resolve_path(settings.portset_dir) if settings.portset_dir else None)
        self.bucket = TokenBucket(settings.rate_pps, max(1.0, settings.rate_pps * settings.burst_s), clock)
        self.polite = PolitenessCap(settings.per_target_pps, clock)
        self.codec = default_codec()
        self.tracker = OffsetTracker()
        self.runs: set[CommandRun] = set()
        self.intake = CommandIntake(self.settings, self.metrics, self.publisher, self.codec, self.tracker,
                                    self.execute, self._refusal_us, self._fail)
        self.ranges = RangeGuard(self.metrics)
        self._stop = asyncio.Event()
        self._abandon = asyncio.Event()
        self._fatal: BaseException | None = None
        self._opened = False
        self._assigned = False
        self._caught_up = False
        # The consumer-group loop's own state (:meth:`run`).
        self._tasks: set[asyncio.Task] = set()
        self._paused = False
        self._stop_deadline: float | None = None
        self._last_commit = self._last_lag = self._idle_since = 0.0

    # -- one command -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the backend (checks its prerequisites)."""
        if not self._opened:
            await self.backend.open()
            self._opened = True

    def _now_us(self) -> int:
        return time.time_ns() // 1000

    async def execute(self, command: dict, *, source: Any = None) -> list[TargetTally]:
        """Vet, run and report one decoded ScanCommand; returns its tallies (ScanDones sent).

        ``source`` is the Kafka record it came from (for dead-letter headers); with a source, a
        command that has not started when a stop is requested raises :class:`NotStarted` (it is
        left to the next agent). Records are sent but not flushed; the caller flushes before
        committing.
        """
        from_group = source is not None
        await self.open()
        virtual = self.backend.virtual_time
        prepared = prepare(command, self.settings, self.allowlist, self.catalog)
        if isinstance(prepared, Refusal):
            return self.intake.refuse(command, prepared, source)
        start_us = self._start_us(command, virtual)
        expires = command.get("expires_at") or 0
        if expires and start_us > expires:
            return self.intake.refuse_targets(prepared, "command expired before it could start", start_us)
        if prepared.sweep and self.settings.skip_tracked and not self.tracked.caught_up.is_set():
            # Without the full ip-state a sweep could probe IPs the scheduler scans itself.
            while not self.tracked.caught_up.is_set():
                self._leave_if_stopping(prepared, from_group)
                await asyncio.sleep(0.1)
        if not virtual:
            not_before = command.get("not_before") or 0
            while self._now_us() < not_before:
                self._leave_if_stopping(prepared, from_group)
                await asyncio.sleep(min(1.0, (not_before - self._now_us()) / 1e6))
            start_us = self._now_us()
        self._leave_if_stopping(prepared, from_group)
        claim = await self.ranges.claim(prepared, lambda: self._leave_if_stopping(prepared, from_group))
        if claim is not None and not virtual:
            start_us = self._now_us()
        try:
            return await self._run_command(prepared, start_us, virtual)
        finally:
            self.ranges.release(claim)

    def _leave_if_stopping(self, prepared: Prepared, from_group: bool) -> None:
        """A command of the group that has not started when a stop is requested is left to the next
        agent: raises :class:`NotStarted`."""
        if self._stop.is_set() and from_group:
            raise NotStarted(prepared.command_id)

    async def _run_command(self, prepared: Prepared, start_us: int, virtual: bool) -> list[TargetTally]:
        run = CommandRun(prepared, self.settings, bucket=self.bucket, polite=self.polite,
                         exclusions=self.exclusions, tracked=self.tracked, publisher=self.publisher,
                         metrics=self.metrics, start_us=start_us, clock=self.clock, virtual=virtual,
                         ipv6=getattr(self.backend, "ipv6", True))
        self.runs.add(run)
        self.metrics.inflight_commands = len(self.runs)
        cancelled = False
        try:
            if run.active and not run.stopping:
                await self.backend.run(run)
        except asyncio.CancelledError:
            # Still say what was done (ABORTED), then let the cancellation through: the offset is
            # not committed, so the command runs again elsewhere.
            run.abort("agent stopped; scan abandoned")
            cancelled = True
        finally:
            self.runs.discard(run)
            self.metrics.inflight_commands = len(self.runs)
        tallies = run.finish()
        for tally in tallies:
            self.publisher.done(tally)
            self.metrics.dones_published += 1
        outcome = "aborted" if run.aborted else "complete"
        self.metrics.commands[outcome] += 1
        self.intake.remember(prepared.command_id)
        log.info("command %s %s: %s", prepared.command_id, outcome,
                 ", ".join(f"{t.target.text} {t.status.lower()} {t.responses} responses "
                           f"{t.packets} packets" for t in tallies),
                 extra={"command_id": prepared.command_id, "outcome": outcome})
        if cancelled:
            raise asyncio.CancelledError
        return tallies

    def _start_us(self, command: dict, virtual: bool) -> int:
        if not virtual:
            return self._now_us()
        # Virtual time: the scan happens when it was due, whatever the wall clock says.
        due = command.get("not_before") or command.get("issued_at") or self._now_us()
        return max(due, self.settings.sim_epoch_us)

    def _refusal_us(self, command: dict) -> int:
        """The time a refused command's ScanDones carry."""
        return self._start_us(command, self.backend.virtual_time)

    # -- the consumer-group loop -------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True once a stop was requested (a signal, or :meth:`request_stop`)."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Stop taking commands; running ones get ``stop_grace_s`` to finish (first signal)."""
        if self._stop.is_set():
            self.abandon()
        self._stop.set()

    def abandon(self) -> None:
        """Abandon running commands now: they end ABORTED (second signal, or after the grace)."""
        self._stop.set()
        self._abandon.set()
        for run in list(self.runs):
            run.abort("agent stopped; scan abandoned")

    def install_signal_handlers(self, on_first: Callable[[], None] | None = None) -> None:
        """SIGTERM and SIGINT call :meth:`request_stop` (a second one abandons).

        The handlers are plain :func:`signal.signal` handlers, not the event loop's: they run as soon
        as the main thread runs Python again, even while the loop is held up in a blocking call (say,
        a producer waiting for metadata), and hand the stop to the loop thread-safely. ``on_first`` is
        called from the first signal's handler itself (the CLI arms its stop deadline there).
        """
        loop = asyncio.get_running_loop()
        signalled = [False]

        def handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
            if not signalled[0]:
                signalled[0] = True
                log.info("signal %s: stopping", signal.Signals(signum).name)
                if on_first is not None:
                    on_first()
            try:
                loop.call_soon_threadsafe(self.request_stop)
            except RuntimeError:  # the loop has already ended: nothing left to stop
                pass

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    async def run(self, *, until_idle_s: float | None = None, on_tick: Callable[[], None] | None = None,
                  on_wedged: Callable[[str], None] | None = None) -> int:
        """Consume commands until stopped; returns the exit code (0, or 1 after a fatal error).

        ``until_idle_s``: also stop once nothing has run and nothing was waiting for that long.
        ``on_wedged(reason)``: called when the group's client is stuck in a state it does not leave
        (:class:`~probe_agent.group.EmptyAssignmentRejoin`); the CLI starts the agent again.
        """
        await self.open()
        consumer = CommandsConsumer(self.kafka, self.topics.commands, self.settings.resolved_group_id(),
                                    f"scanflow-agent-{self.agent_id}")
        reader = self._follow_ip_state()
        await self._join_group(consumer, reader)
        rejoin = EmptyAssignmentRejoin(consumer, self.metrics, on_wedged)
        self._last_commit = self._last_lag = self.clock()
        self._idle_since = self.clock()
        try:
            while self._fatal is None:
                now = self.clock()
                if self._stop.is_set():
                    if await self._wind_down(now):
                        break
                else:
                    await self._take_commands(consumer)
                    self._stop_if_idle(now, until_idle_s)
                await self._commit_if_due(consumer, now)
                await rejoin.check(now, watching=self._assigned and not self._stop.is_set())
                await self._refresh_backlog(consumer, now)
                if on_tick is not None:
                    on_tick()
            if self._fatal is None:
                await consumer.call(self._commit_step, consumer.consumer)
        except DeliveryError as exc:
            self._fatal = exc
        finally:
            await self._shut_down(consumer, reader)
        return self._exit_code()

    def _follow_ip_state(self):
        """Start following the ip-state topic (sweeps skip tracked IPs); None when they need not."""
        from probe_agent.publisher import IpStateReader

        reader = IpStateReader(self.kafka, self.topics.ip_state, self.tracked).start() \
            if self.settings.skip_tracked else None
        if reader is None:
            self.tracked.caught_up.set()
        return reader

    async def _join_group(self, consumer: CommandsConsumer, reader) -> None:
        """Make the group's consumer, wait for the commands topic, subscribe; a missing topic is a
        :class:`ConfigError` naming the fix."""
        await consumer.create()
        try:
            await consumer.wait_for_topic()
        except ValueError as exc:
            await consumer.close_unjoined()
            if reader is not None:
                reader.stop()
            raise ConfigError(f"topics.commands: {exc}") from None
        await consumer.subscribe(rebalance_listener(consumer.consumer, self._finished_offsets,
                                                    self.tracker.revoke, self._on_assigned))

    def _on_assigned(self) -> None:
        """(rebalance listener) Partitions were assigned (the backlog is measured from now on)."""
        self._assigned = True

    async def _wind_down(self, now: float) -> bool:
        """(stopping) Start the grace period, abandon what still runs once it is over, wait a little
        for the running commands; True once none is left."""
        if self._stop_deadline is None:
            self._stop_deadline = now + self.settings.stop_grace_s
            log.info("stopping: %d commands running, %.0f s to finish", len(self._tasks),
                     self.settings.stop_grace_s)
        if now >= self._stop_deadline and not self._abandon.is_set():
            self.abandon()
        if not self._tasks:
            return True
        await asyncio.wait(self._tasks, timeout=0.2)
        return False

    async def _take_commands(self, consumer: CommandsConsumer) -> None:
        """Pause the partitions while ``max_inflight_commands`` run (resume after), poll, and start
        a task per command record."""
        full = len(self._tasks) >= self.settings.max_inflight_commands
        if full != self._paused:
            await consumer.set_paused(full)
            self._paused = full
        polled = await consumer.poll(max(1, self.settings.max_inflight_commands - len(self._tasks)))
        for records in polled.values():
            for rec in records:
                self._start(rec)

    def _start(self, rec) -> None:
        """Track the record's offset and run it in a task of its own."""
        self.tracker.add(partition_of(rec), rec.offset)
        task = asyncio.create_task(self.intake.handle(rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop_if_idle(self, now: float, until_idle_s: float | None) -> None:
        """Stop once nothing has run, nothing was waiting and the backlog was read for ``until_idle_s``."""
        if self._tasks or self.tracker.outstanding() or not self._caught_up:
            self._idle_since = now
        elif until_idle_s is not None and now - self._idle_since >= until_idle_s:
            self._stop.set()

    async def _commit_if_due(self, consumer: CommandsConsumer, now: float) -> None:
        """Every ``commit_interval_s``, the commit step."""
        if now - self._last_commit >= self.settings.commit_interval_s:
            await consumer.call(self._commit_step, consumer.consumer)
            self._last_commit = now

    async def _refresh_backlog(self, consumer: CommandsConsumer, now: float) -> None:
        """Every 2 s (at every turn until the backlog was read once after an assignment): the backlog
        and tracked-IP gauges, and whether the assigned partitions are read to their end."""
        if now - self._last_lag >= 2.0 or (self._assigned and not self._caught_up):
            backlog = await consumer.lag()
            if backlog is not None:               # None: the broker did not say in time (try again)
                self.metrics.backlog = backlog
            self._caught_up = self._assigned and backlog == 0
            self.metrics.tracked_ips = len(self.tracked)
            self._last_lag = now

    async def _shut_down(self, consumer: CommandsConsumer, reader) -> None:
        """Cancel what still runs, close the consumer, the ip-state reader, the producer (its last
        records delivered, or a fatal error) and the backend."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await consumer.close()
        if reader is not None:
            reader.stop()
        try:
            self.publisher.close(10)
        except DeliveryError as exc:
            self._fatal = self._fatal or exc
        await self.backend.close()

    @property
    def fatal(self) -> BaseException | None:
        """The error that stopped :meth:`run`, if one did."""
        return self._fatal

    def _exit_code(self) -> int:
        if self._fatal is not None:
            log.error("agent stopped on a fatal error; uncommitted commands will be re-executed: %s",
                      self._fatal)
            return 1
        return 0

    def _fail(self, exc: BaseException) -> None:
        """A fatal error: the loop stops, nothing more is committed."""
        self._fatal = exc

    # -- offsets -----------------------------------------------------------------------------------

    def _finished_offsets(self, partitions: set) -> dict:
        """(rebalance listener) The finished prefix of ``partitions`` as offsets to commit, after
        everything they produced is acknowledged; a failed flush is fatal."""
        try:
            return finished_offsets(self.tracker, self.publisher, partitions)
        except DeliveryError as exc:
            self._fail(exc)
            raise

    def _commit_step(self, consumer, only: set | None = None) -> None:
        """(consumer thread) Flush, then commit the finished prefix of each partition; a failed flush
        is fatal."""
        try:
            commit_finished(self.tracker, self.publisher, consumer, only)
        except DeliveryError as exc:
            self._fail(exc)
            raise
