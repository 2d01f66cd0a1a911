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
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from connectors.avro_codec import CodecError, default_codec
from connectors.kafka_io import DeliveryError
from probe_agent.backends import Backend, make_backend
from probe_agent.job import CommandRun, PortSetCatalog, Prepared, TargetTally, prepare
from probe_agent.metrics import AgentMetrics
from probe_agent.publisher import EventPublisher
from probe_agent.ratelimit import PolitenessCap, TokenBucket
from probe_agent.safety import Allowlist, ExclusionList, Refusal, TrackedIps
from probe_agent.settings import AgentSettings
from probe_agent.targets import Target
from scanflow.config import ConfigError, KafkaSettings, TopicsSettings, resolve_path

log = logging.getLogger("scanflow.agent")

#: Command ids remembered as executed (redeliveries of these are skipped).
DONE_IDS_KEPT = 100_000


class NotStarted(Exception):
    """The agent is stopping and this command had not started: leave it to the next agent
    (its offset is not committed, nothing was published for it)."""


class OffsetTracker:
    """Per partition, the offsets handed out and which are finished; yields committable offsets.

    Thread-safe: the event loop adds and finishes, the consumer thread takes commits and revokes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, OrderedDict[int, bool]] = {}

    def add(self, tp: Any, offset: int) -> None:
        with self._lock:
            self._pending.setdefault(tp, OrderedDict())[offset] = False

    def finish(self, tp: Any, offset: int) -> None:
        with self._lock:
            pending = self._pending.get(tp)
            if pending is not None and offset in pending:
                pending[offset] = True

    def take_committable(self, only: set | None = None) -> dict[Any, int]:
        """Remove the finished prefix of each partition; returns ``{tp: next offset to read}``."""
        out: dict[Any, int] = {}
        with self._lock:
            for tp, pending in self._pending.items():
                if only is not None and tp not in only:
                    continue
                last = None
                while pending:
                    offset, done = next(iter(pending.items()))
                    if not done:
                        break
                    pending.popitem(last=False)
                    last = offset
                if last is not None:
                    out[tp] = last + 1
        return out

    def revoke(self, tps) -> None:
        with self._lock:
            for tp in tps:
                self._pending.pop(tp, None)

    def outstanding(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())


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
        self._done_ids: OrderedDict[str, None] = OrderedDict()
        self._inflight_ids: dict[str, asyncio.Task] = {}
        self._stop = asyncio.Event()
        self._abandon = asyncio.Event()
        self._fatal: BaseException | None = None
        self._opened = False
        self._assigned = False
        self._caught_up = False
        #: Ranges being scanned now, each with the event set when its scan ends (:meth:`_one_at_a_time`).
        self._ranges: list[tuple[Any, asyncio.Event]] = []

    # -- one command -------------------------------------------------------------------------------

    async def _one_at_a_time(self, prepared: Prepared, from_group: bool) -> asyncio.Event | None:
        """Wait until no range of ``prepared`` overlaps a range this agent is scanning now, then
        claim them; returns the event to set when the scan ends (None: no range, nothing claimed).

        Two sweeps of one block must never run at once (a slow sweep on a fast clock, a command
        delivered again): they would double the packets its addresses get and interleave two rounds'
        answers. A block's commands share its key, hence its partition and its agent, so a guard in
        the agent is enough.
        """
        nets = [t.network for t in prepared.targets if not t.is_single]
        if not nets:
            return None
        while True:
            busy = [ev for net, ev in self._ranges if any(n.overlaps(net) for n in nets if n.version == net.version)]
            if not busy:
                break
            self.metrics.commands["waited-for-range"] += 1
            while not busy[0].is_set():
                if self._stop.is_set() and from_group:
                    raise NotStarted(prepared.command_id)
                try:
                    await asyncio.wait_for(busy[0].wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
        done = asyncio.Event()
        self._ranges.extend((net, done) for net in nets)
        return done

    def _release(self, done: asyncio.Event | None) -> None:
        if done is None:
            return
        done.set()
        self._ranges = [(net, ev) for net, ev in self._ranges if ev is not done]

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
            return self._refuse(command, prepared, source)
        start_us = self._start_us(command, virtual)
        expires = command.get("expires_at") or 0
        if expires and start_us > expires:
            return self._refuse_targets(prepared, "command expired before it could start", start_us)
        if prepared.sweep and self.settings.skip_tracked and not self.tracked.caught_up.is_set():
            # Without the full ip-state a sweep could probe IPs the scheduler scans itself.
            while not self.tracked.caught_up.is_set():
                if self._stop.is_set() and from_group:
                    raise NotStarted(prepared.command_id)
                await asyncio.sleep(0.1)
        if not virtual:
            not_before = command.get("not_before") or 0
            while self._now_us() < not_before:
                if self._stop.is_set() and from_group:
                    raise NotStarted(prepared.command_id)
                await asyncio.sleep(min(1.0, (not_before - self._now_us()) / 1e6))
            start_us = self._now_us()
        if self._stop.is_set() and from_group:
            raise NotStarted(prepared.command_id)
        claim = await self._one_at_a_time(prepared, from_group)
        if claim is not None and not virtual:
            start_us = self._now_us()
        try:
            return await self._run_command(prepared, start_us, virtual)
        finally:
            self._release(claim)

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
        self._remember(prepared.command_id)
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

    def _refuse(self, command: dict, refusal: Refusal, source: Any) -> list[TargetTally]:
        """Refuse a whole command: dead letter + a REFUSED ScanDone per target that parses."""
        log.warning("command %s refused: %s", command.get("command_id"), refusal.message,
                    extra={"command_id": command.get("command_id"), "refusal": refusal.error_class})
        self.metrics.commands["refused"] += 1
        value = source.value if source is not None else self._encode_refused(command)
        key = source.key if source is not None else None
        self._dead_letter(key, value, refusal.error_class, refusal.message, source)
        tallies = []
        now = self._start_us(command, self.backend.virtual_time)
        for text in command.get("targets") or ():
            try:
                target = Target.parse(text)
            except ValueError:
                continue
            tally = TargetTally(f"{command.get('command_id')}/{target.text}", target, command,
                                command.get("policy") or "UNKNOWN", started_us=now, ended_us=now,
                                status="REFUSED", detail=refusal.message[:500])
            self.publisher.done(tally)
            self.metrics.dones_published += 1
            tallies.append(tally)
        self._remember(command.get("command_id") or "")
        return tallies

    def _encode_refused(self, command: dict) -> bytes | None:
        """The bytes a refused command without a source record is dead-lettered with: validated when
        it can be, else as written (a malformed target is the reason it is refused, and must not
        stop the refusal), else none (the headers still say why)."""
        from connectors.avro_codec import AvroCodec

        try:
            return self.codec.encode("ScanCommand", command)
        except (CodecError, ValueError, TypeError, KeyError):
            pass
        try:
            return AvroCodec(validate=False).encode("ScanCommand", command)
        except Exception:  # noqa: BLE001 - a record that cannot be written at all: headers only
            return None

    def _refuse_targets(self, prepared: Prepared, detail: str, now: int) -> list[TargetTally]:
        tallies = []
        for target in prepared.targets:
            tally = TargetTally(f"{prepared.command_id}/{target.text}", target, prepared.command,
                                prepared.policy, started_us=now, ended_us=now, status="REFUSED", detail=detail)
            self.publisher.done(tally)
            self.metrics.dones_published += 1
            tallies.append(tally)
        self.metrics.commands["expired"] += 1
        self._remember(prepared.command_id)
        return tallies

    def _dead_letter(self, key, value, error_class: str, message: str, source: Any) -> None:
        kwargs = {}
        if source is not None:
            kwargs = dict(topic=source.topic, partition=source.partition, offset=source.offset,
                          timestamp_ms=source.timestamp, headers=list(source.headers or []))
        self.publisher.dead_letter(key, value, error_class, message, **kwargs)
        self.metrics.dead_letters += 1

    def _remember(self, command_id: str) -> None:
        if command_id:
            self._done_ids[command_id] = None
            while len(self._done_ids) > DONE_IDS_KEPT:
                self._done_ids.popitem(last=False)

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

    async def run(self, *, until_idle_s: float | None = None, on_tick: Callable[[], None] | None = None) -> int:
        """Consume commands until stopped; returns the exit code (0, or 1 after a fatal error).

        ``until_idle_s``: also stop once nothing has run and nothing was waiting for that long.
        """
        from kafka import AsyncConsumerRebalanceListener

        from connectors.kafka_io import make_consumer
        from probe_agent.publisher import IpStateReader

        await self.open()
        loop = asyncio.get_running_loop()
        kx = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commands-consumer")

        def call(fn, *args, **kwargs):
            return loop.run_in_executor(kx, lambda: fn(*args, **kwargs))

        reader = IpStateReader(self.kafka, self.topics.ip_state, self.tracked).start() \
            if self.settings.skip_tracked else None
        if reader is None:
            self.tracked.caught_up.set()
        # A 10 s session (heartbeats run in the client's own thread, so long scans do not count)
        # lets the group hand a crashed agent's partitions to another within seconds.
        # Metadata refreshed every 30 s (default 5 min), so partitions added to the commands topic
        # reach the group sooner. (It did not cure the idle agent of docs/RELIABILITY.md, whose
        # cause is still open.)
        consumer = await call(make_consumer, self.kafka, self.settings.resolved_group_id(),
                              max_poll_interval_ms=300_000, session_timeout_ms=10_000,
                              heartbeat_interval_ms=3_000, metadata_max_age_ms=30_000,
                              client_id=f"scanflow-agent-{self.agent_id}")
        # Wait until the broker lists the commands topic's partitions before joining the group: a
        # join made while a just-created topic had none yet was assigned nothing (seen on a
        # just-started broker). A missing topic is an error naming the fix. (A consumer of its own:
        # asking the group's consumer itself made it rebalance once more right after joining.)
        try:
            await call(_wait_for_topic, self.kafka, self.topics.commands)
        except ValueError as exc:
            await call(consumer.close, autocommit=False)
            kx.shutdown(wait=False)
            if reader is not None:
                reader.stop()
            raise ConfigError(f"topics.commands: {exc}") from None
        agent = self

        class Listener(AsyncConsumerRebalanceListener):
            # kafka-python 3 runs rebalance listeners on the consumer's IO thread, where the blocking
            # ``commit()`` refuses to run ("Cannot block on net.run() from the IO thread"): the
            # listener is a coroutine the client awaits, and commits with the coordinator's own
            # coroutine (the coroutine behind ``commit()``; kafka-python is pinned to 3.0.x).
            async def on_partitions_revoked(self, revoked):
                # Commit what is finished in the partitions we lose; the rest is re-run by the next owner.
                try:
                    offsets = agent._finished_offsets(set(revoked))
                    if offsets:
                        await consumer._coordinator._commit_offsets_sync_async(offsets)
                        log.info("committed %d finished command offset(s) of revoked partitions", len(offsets))
                except Exception as exc:  # noqa: BLE001 - logged; the next owner re-runs
                    log.warning("commit on revocation failed (those commands will be re-executed): %s", exc)
                agent.tracker.revoke(revoked)

            async def on_partitions_assigned(self, assigned):
                agent._assigned = True
                log.info("assigned %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))

        listener = Listener()
        await call(consumer.subscribe, [self.topics.commands], listener=listener)
        group = self.settings.resolved_group_id()
        empty_since: float | None = None
        tasks: set[asyncio.Task] = set()
        paused = False
        last_commit = last_lag = self.clock()
        idle_since = self.clock()
        stop_deadline: float | None = None
        try:
            while True:
                if self._fatal is not None:
                    break
                now = self.clock()
                if self._stop.is_set():
                    if stop_deadline is None:
                        stop_deadline = now + self.settings.stop_grace_s
                        log.info("stopping: %d commands running, %.0f s to finish", len(tasks),
                                 self.settings.stop_grace_s)
                    if now >= stop_deadline and not self._abandon.is_set():
                        self.abandon()
                    if not tasks:
                        break
                    await asyncio.wait(tasks, timeout=0.2)
                else:
                    full = len(tasks) >= self.settings.max_inflight_commands
                    if full != paused:
                        await call(_set_paused, consumer, full)
                        paused = full
                    polled = await call(consumer.poll, timeout_ms=200,
                                        max_records=max(1, self.settings.max_inflight_commands - len(tasks)))
                    for records in polled.values():
                        for rec in records:
                            self.tracker.add(_tp(rec), rec.offset)
                            task = asyncio.create_task(self._handle(rec))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                    if tasks or self.tracker.outstanding() or not self._caught_up:
                        idle_since = now
                    elif until_idle_s is not None and now - idle_since >= until_idle_s:
                        self._stop.set()
                if now - last_commit >= self.settings.commit_interval_s:
                    await call(self._commit_step, consumer)
                    last_commit = now
                # No partition for EMPTY_REJOIN_S while the broker shows the group empty (seen on a
                # just-started broker: the agent believed it had joined, got an empty assignment and
                # idled for good) or able to give one: join again.
                if not self._assigned or self._stop.is_set() or await call(consumer.assignment):
                    empty_since = None
                elif empty_since is None:
                    empty_since = now
                elif now - empty_since >= EMPTY_REJOIN_S:
                    empty_since = now
                    if await call(_stale_empty_assignment, self.kafka, group, self.topics.commands, consumer):
                        log.warning("assigned no partition of %s although the group could give one: "
                                    "joining the group again", self.topics.commands)
                        self.metrics.errors["empty-assignment-rejoin"] += 1
                        await call(consumer.unsubscribe)
                        await call(consumer.subscribe, [self.topics.commands], listener=listener)
                if now - last_lag >= 2.0 or (self._assigned and not self._caught_up):
                    self.metrics.backlog = await call(_lag, consumer)
                    self._caught_up = self._assigned and self.metrics.backlog == 0
                    self.metrics.tracked_ips = len(self.tracked)
                    last_lag = now
                if on_tick is not None:
                    on_tick()
            if self._fatal is None:
                await call(self._commit_step, consumer)
        except DeliveryError as exc:
            self._fatal = exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await call(consumer.close, autocommit=False)
            kx.shutdown(wait=True)
            if reader is not None:
                reader.stop()
            try:
                self.publisher.close(10)
            except DeliveryError as exc:
                self._fatal = self._fatal or exc
            await self.backend.close()
        if self._fatal is not None:
            log.error("agent stopped on a fatal error; uncommitted commands will be re-executed: %s",
                      self._fatal)
            return 1
        return 0

    async def _handle(self, rec) -> None:
        """Run one command record; mark its offset finished unless cancelled, not started or
        fatally failed."""
        try:
            await self._handle_record(rec)
        except NotStarted:
            self.metrics.commands["left-for-next-agent"] += 1
            return
        except (DeliveryError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - errors are data: dead-letter, keep going
            log.exception("command at %s/%d@%d failed", rec.topic, rec.partition, rec.offset)
            self.metrics.errors["command-failed"] += 1
            try:
                self._dead_letter(rec.key, rec.value, "AgentError", f"{type(exc).__name__}: {exc}", rec)
            except Exception as inner:  # noqa: BLE001 - cannot even report it: stop, re-run later
                self._fatal = inner
                return
        self.tracker.finish(_tp(rec), rec.offset)

    async def _handle_record(self, rec) -> None:
        try:
            command = self.codec.decode_as("ScanCommand", rec.value)
        except CodecError as exc:
            self.metrics.commands["malformed"] += 1
            self._dead_letter(rec.key, rec.value, exc.error_class, str(exc), rec)
            return
        cid = command["command_id"]
        hint = command.get("shard_hint")
        if self.settings.shards > 1 and hint is not None and hint != self.settings.shard:
            self.metrics.commands["other-shard"] += 1
            return
        if cid in self._done_ids:
            self.metrics.commands["duplicate"] += 1
            return
        running = self._inflight_ids.get(cid)
        if running is not None:
            await asyncio.shield(running)
            self.metrics.commands["duplicate"] += 1
            return
        self._inflight_ids[cid] = asyncio.current_task()
        try:
            await self.execute(command, source=rec)
        finally:
            self._inflight_ids.pop(cid, None)

    def _finished_offsets(self, partitions: set) -> dict:
        """(rebalance listener) The finished prefix of ``partitions`` as offsets to commit, after
        everything they produced is acknowledged (the producer flushes on its own IO thread)."""
        from kafka.structs import OffsetAndMetadata

        offsets = self.tracker.take_committable(partitions)
        if not offsets:
            return {}
        try:
            self.publisher.flush()
        except DeliveryError as exc:
            self._fatal = exc
            raise
        return {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}

    def _commit_step(self, consumer, only: set | None = None) -> None:
        """(consumer thread) Flush, then commit the finished prefix of each partition."""
        from kafka.structs import OffsetAndMetadata

        offsets = self.tracker.take_committable(only)
        if not offsets:
            return
        try:
            self.publisher.flush()
        except DeliveryError as exc:
            self._fatal = exc
            raise
        assigned = consumer.assignment()
        mine = {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()
                if only is not None or tp in assigned}
        if mine:
            try:
                consumer.commit(mine)
            except Exception as exc:  # noqa: BLE001 - e.g. rebalanced meanwhile; records come again
                log.warning("offset commit failed (the commands will be re-executed): %s", exc)


def _tp(rec):
    from kafka import TopicPartition

    return TopicPartition(rec.topic, rec.partition)


def _wait_for_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 15.0) -> None:
    """Return once the broker lists ``topic``'s partitions; ``ValueError`` if it does not in time."""
    from connectors.kafka_io import make_consumer, topic_partitions

    probe = make_consumer(kafka)
    try:
        topic_partitions(probe, [topic], timeout_s)
    finally:
        probe.close(autocommit=False)


#: How long an agent of the group waits with no partition before checking whether that is stale.
EMPTY_REJOIN_S = 20.0


def _stale_empty_assignment(kafka: KafkaSettings, group: str, topic: str, consumer) -> bool:
    """(consumer thread) True when ``consumer`` holds no partition of ``topic`` and the broker says
    its group has no member at all (the consumer believes it joined, the broker never kept it), or
    is stable with no more members than ``topic`` has partitions (every assignor then gives each
    member at least one)."""
    from connectors.kafka_admin import admin_client
    from connectors.kafka_io import make_consumer, topic_partitions

    if consumer.assignment():
        return False
    # The broker's view through a client of its own: the group's consumer may be the one whose
    # metadata lacks the topic (then its join saw no partition, and no later change shows one).
    probe = make_consumer(kafka)
    admin = admin_client(kafka)
    try:
        partitions = topic_partitions(probe, [topic], 5.0)
        info = admin.describe_groups([group]).get(group) or {}
    except Exception as exc:  # noqa: BLE001 - a check that cannot run decides nothing
        log.info("could not check the empty assignment (%s: %s)", type(exc).__name__, exc)
        return False
    finally:
        probe.close()
        admin.close()
    members = info.get("members") or []
    state = info.get("group_state") or info.get("state")
    log.info("no partition assigned: group %s is %s with %d member(s), %s has %d partition(s), this "
             "consumer's metadata lists %s", group, state, len(members), topic, len(partitions),
             sorted(consumer.partitions_for_topic(topic) or ()))
    # Empty (no member at all, this consumer included, though it believes it joined: what the
    # stuck agents showed), or stable with no more members than partitions (each gets one).
    return state in ("Empty", "Dead") or (state == "Stable" and len(members) <= len(partitions))


def _set_paused(consumer, pause: bool) -> None:
    """(consumer thread) Pause every assigned partition, or resume the paused ones."""
    if pause:
        consumer.pause(*consumer.assignment())
    else:
        consumer.resume(*consumer.paused())


def _lag(consumer) -> int:
    """(consumer thread) Records in the assigned partitions not yet read."""
    assigned = list(consumer.assignment())
    if not assigned:
        return 0
    try:
        ends = consumer.end_offsets(assigned)
        return int(sum(max(0, ends[tp] - consumer.position(tp)) for tp in assigned))
    except Exception:  # noqa: BLE001 - a gauge, best effort
        return 0
