"""The scheduler pipeline: wiring only. Every stage lives in its own module.

::

    ReadEvents ─► AssembleRounds ─► EstimateDevices ─► DetectChanges ─┬─► decisions ──► archive (lake)
    (Kafka, decode,  (per scan id:     (fingerprint +     (per IP: state, ├─► commands ──┐
     dead letters)    until ScanDone    device of each     dedupe, policy  └─► states ──► WriteIpStates
                      or timeout)       answer) ─► archive  core, timer)                 (ip-state, compacted)
    ReadIpStates (restore at start) ──────────────────────────►┤              Sweeps ─►┴─► WriteCommands
    ReadKnowledgeUpdates (kb-updates, fanned out over ip-state) ►┘  (urgent rescans of affected models)

WriteIpStates and WriteCommands are one step in the live pipeline, ``WriteCommandsThenStates``: a
bundle's ip-state records are sent only once its commands are acknowledged.

:class:`Scheduler` is the part shared by the live pipeline (:func:`build_live`, Prism by default) and
the bounded replay (:func:`build_replay`, FnApiRunner): items in, decisions / commands / states /
observations out. ``run_live`` and ``run_replay`` are what ``scanflow pipeline run`` calls.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from pipelines.per_ip_stage import DetectChanges
from pipelines.commands import WriteCommands, WriteCommandsThenStates
from pipelines.decide_batch import DecideInBatch
from pipelines.devices import EstimateDevices
from pipelines.rounds import AssembleRounds
from pipelines.settings import PipelineSettings
from pipelines.sweeps import Sweeps, sweep_period_of

log = logging.getLogger(__name__)


@dataclass
class SchedulerOutputs:
    """The PCollections a :class:`Scheduler` produces."""

    decisions: Any      # Decision records
    commands: Any       # (ip, ScanCommand record) from the per-IP timers
    states: Any         # (ip, IpState record or None, headers)
    observations: Any   # Observation records (empty unless archived)
    writes: Any = None  # the commands and states again, tagged, on one PCollection (``writes=True``)


class Scheduler(beam.PTransform):
    """Events -> decisions, per-IP commands, state changes and archived observations.

    Input: a PCollection of :class:`~scanflow.lifecycle.rounds.Event` / :class:`~scanflow.lifecycle.rounds.Done`, or a dict
    ``{"items": ..., "restore": ..., "urgent": ...}`` with the ``(ip, RestoreRecord)`` of a restart
    and the ``(ip, KnowledgeUrgent)`` of knowledge updates (both optional). ``horizon``
    (bounded replays) ends every timer before it; ``emit_states=False`` skips the ip-state records.
    """

    def __init__(self, policy, settings: PipelineSettings, *, horizon: float | None = None, archive: bool = False,
                 emit_states: bool = True, batch: bool = False, catch_up: bool = False, writes: bool = False):
        super().__init__()
        self._catch_up = catch_up
        self._writes = writes
        self._policy, self._settings, self._horizon, self._archive = policy, settings, horizon, archive
        self._emit_states = emit_states
        if batch and horizon is None:
            raise ValueError("batch decisions need a bounded window (a horizon)")
        self._batch = batch

    def expand(self, inputs):
        items, restore, urgent = ((inputs["items"], inputs.get("restore"), inputs.get("urgent"))
                                  if isinstance(inputs, dict) else (inputs, None, None))
        s = self._settings
        rounds = items | "AssembleRounds" >> AssembleRounds(s.round_timeout_s, s.dedupe_horizon_s, self._horizon,
                                                            sweep_gather_s=s.sweep_gather_s)
        rounds, observations = rounds | "EstimateDevices" >> EstimateDevices(self._policy.estimator, self._archive)
        keyed = rounds if restore is None else (rounds, restore) | "WithRestore" >> beam.Flatten()
        if urgent is not None:
            keyed = (keyed, urgent) | "WithKnowledgeUpdates" >> beam.Flatten()
        if self._batch:
            if restore is not None or urgent is not None:
                raise ValueError("batch decisions start from no state: no restore, no knowledge updates")
            decisions, commands, states = keyed | "DecideInBatch" >> DecideInBatch(
                self._policy, recent_scans=s.recent_scans, command_ttl_s=s.command_ttl_s,
                round_timeout_s=s.round_timeout_s, horizon=self._horizon, emit_states=self._emit_states,
                forget_s=s.dedupe_horizon_s)
            return SchedulerOutputs(decisions, commands, states, observations)
        decisions, commands, states, *writes = keyed | "DetectChanges" >> DetectChanges(
            self._policy, recent_scans=s.recent_scans, command_ttl_s=s.command_ttl_s,
            round_timeout_s=s.round_timeout_s, horizon=self._horizon, emit_states=self._emit_states,
            forget_s=s.dedupe_horizon_s, catch_up=self._catch_up, writes=self._writes)
        return SchedulerOutputs(decisions, commands, states, observations, writes[0] if writes else None)


def _archive(outputs: SchedulerOutputs, root: str, mode: str) -> None:
    """Observations, decisions and the tracked IPs' states to the Parquet lake (``connectors.beam_lake``).

    The states are the records the stage writes to ``scanflow.ip-state`` (tombstones dropped: a
    demoted IP's last state stays in the lake's history, its later decision says it went silent).
    A replay emits no states, so its ``ip_state`` table stays empty."""
    from connectors.beam_lake import WriteToLake

    _ = outputs.observations | "ArchiveObservations" >> WriteToLake(root, "observations", mode=mode)
    _ = outputs.decisions | "ArchiveDecisions" >> WriteToLake(root, "decisions", mode=mode)
    _ = (outputs.states
         | "StateRecords" >> beam.FlatMap(_state_record)
         | "ArchiveIpStates" >> WriteToLake(root, "ip_state", mode=mode))


def _state_record(element):
    """``(ip, IpState record or None, headers)`` -> the record, nothing for a tombstone."""
    record = element[1]
    if record is not None:
        yield record


def build_live(p: beam.Pipeline, settings, pipeline: PipelineSettings, policy, *, now: float | None = None,
               restore: bool = True, rewind: bool = True, kb_updates: bool | None = None) -> SchedulerOutputs:
    """The live scheduler on ``p``: events from the consumer group, state restored from
    ``scanflow.ip-state``, knowledge updates from ``scanflow.kb-updates`` (urgent rescans:
    :mod:`pipelines.kb_updates`), commands and state changes back to Kafka, sweeps from now on (each
    block at its period under ``policy``: :func:`pipelines.sweeps.sweep_period_of`).

    ``kb_updates``: True reads the topic, False does not, None (default) reads it when it exists
    (``scanflow pipeline run`` requires it; a warning says when it is missing).

    ``pipeline.partitions`` (one of several jobs on Prism, :mod:`pipelines.partitions`): the job
    reads only its events partitions, restores and rescans only its addresses and sweeps only its
    blocks; checked against the events topic here (a one-line :class:`scanflow.config.ConfigError`)."""
    from pipelines.kb_updates import ReadKnowledgeUpdates, topic_exists
    from pipelines.partitions import refuse_split_moves, share_of
    from pipelines.sources import ReadEvents, rewound_start_offsets

    kafka, topics = settings.kafka, settings.topics
    share = share_of(kafka, topics.events, pipeline.partitions) if pipeline.partitions.strip() else None
    if share is not None and share.whole:
        share = None
    refuse_split_moves(share, policy)
    parts = share.partitions if share is not None else None
    if share is not None:
        log.info("scheduler job of partitions %s of %d of %s", list(share.partitions), share.count, topics.events)
    start_offsets = (rewound_start_offsets(kafka, topics.events, pipeline.group_id, pipeline.rewind_s, parts)
                     if rewind else None)
    items = p | "ReadEvents" >> ReadEvents(kafka, topics.events, topics.dead_letter, group_id=pipeline.group_id,
                                           start_offsets=start_offsets, watermark_lag_s=pipeline.watermark_lag_s,
                                           partitions=parts)
    inputs: dict[str, Any] = {"items": items}
    if restore:
        inputs["restore"] = p | "ReadIpStates" >> restore_read(kafka, topics, share)
    if kb_updates is None:
        kb_updates = topic_exists(kafka, topics.kb_updates)
        if not kb_updates:
            log.warning("knowledge updates are off: topic %s (topics.kb_updates) does not exist; create it "
                        "with `scanflow topics create`", topics.kb_updates)
    if kb_updates:
        inputs["urgent"] = p | "ReadKnowledgeUpdates" >> ReadKnowledgeUpdates(
            kafka, topics.kb_updates, topics.ip_state, topics.dead_letter, group_id=pipeline.group_id,
            watermark_lag_s=pipeline.watermark_lag_s, share=share)
    out = inputs | "Schedule" >> Scheduler(policy, pipeline, archive=bool(pipeline.archive_dir),
                                           catch_up=pipeline.catch_up, writes=True)
    # The per-IP commands and states in one step, commands first, fused with the per-IP stage (no
    # Flatten between them): a state saying "issued" is never on the topic without its command (a
    # kill -9 between two separate sinks left such IPs; docs/RELIABILITY.md).
    _ = out.writes | "WriteCommandsThenStates" >> WriteCommandsThenStates(
        kafka, topics.commands, topics.ip_state, topics.dead_letter)
    if pipeline.sweep_ranges:
        sweeps = p | "Sweeps" >> Sweeps(pipeline.sweep_networks(), prefix=pipeline.sweep_prefix,
                                        period_s=policy.params.silent_interval, silent=policy.port_sets.silent,
                                        ttl_s=pipeline.command_ttl_s, start=time.time() if now is None else now,
                                        tick_s=pipeline.sweep_tick_s, policy=policy.name,
                                        first_pass=(getattr(policy, "initial_ports", None) or policy.port_sets.standard)
                                        if pipeline.first_pass else None,
                                        first_pass_window_s=pipeline.first_pass_window_s,
                                        period_of=sweep_period_of(policy),
                                        keep=share.owns_block if share is not None else None)
        _ = sweeps | "WriteSweepCommands" >> WriteCommands(kafka, topics.commands, topics.dead_letter)
    if pipeline.archive_dir:
        _archive(out, pipeline.archive_dir, mode="bundle")
    return out


def restore_read(kafka, topics, share=None):
    """The restore read of a live job: all of ``scanflow.ip-state``, or with ``share`` (one of
    several jobs, :mod:`pipelines.partitions`) the states of the job's own addresses only."""
    from pipelines.partitions import partition_count
    from pipelines.sources import ReadIpStates

    if share is None or share.whole:
        return ReadIpStates(kafka, topics.ip_state, topics.dead_letter)
    # The same partition count: an address is on the same partition number of both topics, so only
    # the job's own ip-state partitions need reading (the key filter applies either way).
    same = partition_count(kafka, topics.ip_state) == share.count
    return ReadIpStates(kafka, topics.ip_state, topics.dead_letter, share=share,
                        partitions=share.partitions if same else None)


def build_replay(p: beam.Pipeline, items, pipeline: PipelineSettings, policy, *, start: float, horizon: float,
                 archive_dir: str = "", batch: bool = True) -> tuple[SchedulerOutputs, Any]:
    """The same stages, bounded, over ``items`` (timestamped events of ``[start, horizon)``).

    ``batch`` (default): each IP's rounds are decided at once (:mod:`pipelines.decide_batch`);
    False: by the live per-IP stage with its state and timers (same decisions, several times
    slower). Returns the scheduler's outputs and the sweep commands of the window (the efficient
    policy's range traffic). Nothing is sent to Kafka: a replay must not command live agents.
    """
    out = items | "Schedule" >> Scheduler(policy, pipeline, horizon=horizon, archive=bool(archive_dir),
                                          emit_states=False, batch=batch)
    sweeps = p | "Sweeps" >> Sweeps(pipeline.sweep_networks(), prefix=pipeline.sweep_prefix,
                                    period_s=policy.params.silent_interval, silent=policy.port_sets.silent,
                                    ttl_s=pipeline.command_ttl_s, start=start, stop=horizon, policy=policy.name,
                                    period_of=sweep_period_of(policy))
    if archive_dir:
        _archive(out, archive_dir, mode="grouped")
    return out, sweeps


def replay_runner():
    """Beam's FnApiRunner for bounded replays, with its in-process worker's state cache off.

    Beam's state cache weighs every cached value with ``objsize``, which walks the globals of every
    loaded module on each call (about 1 ms here); with per-key state on every element that was 85 %
    of a replay's time. The in-process worker reads state from memory anyway, so the cache buys
    nothing. (The module constant is the only switch for the in-process worker; set for the process.)
    """
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers

    worker_handlers.STATE_CACHE_SIZE_MB = 0
    return FnApiRunner()


#: Extra option for portable runners (Prism, Flink): the SDK worker's state cache off, for the reason
#: given in :func:`replay_runner` (each state write would cost a walk over all modules' globals).
NO_STATE_CACHE = "--max_cache_memory_usage_mb=0"


class _Tally(beam.DoFn):
    def __init__(self, name: str):
        self._name = name

    def setup(self):
        from apache_beam.metrics import Metrics

        self._counter = Metrics.counter("scanflow.pipeline", self._name)

    def process(self, element):
        self._counter.inc()


def tally(pcoll, name: str) -> None:
    """Count ``pcoll``'s elements in the counter ``scanflow.pipeline/<name>``."""
    _ = pcoll | f"Tally{name.title().replace('_', '')}" >> beam.ParDo(_Tally(name))


def counters(result) -> dict[str, int]:
    """The ``scanflow.*`` counters of a finished (or cancelled) pipeline result."""
    out: dict[str, int] = {}
    try:
        for c in result.metrics().query()["counters"]:
            if c.key.metric.namespace.startswith("scanflow"):
                name = f"{c.key.metric.namespace}/{c.key.metric.name}"
                out[name] = out.get(name, 0) + (c.committed if c.committed is not None else c.attempted or 0)
    except Exception:  # noqa: BLE001 - metrics are a report, never a reason to fail a run
        log.debug("no metrics from %r", result, exc_info=True)
    return out


def run_live(settings, pipeline: PipelineSettings, *, runner: str | None = None, extra: list[str] | None = None,
             duration_s: float | None = None, on_start=None):
    """Build and run the live scheduler; block until it ends, ``duration_s`` passes or Ctrl-C
    (then the job is cancelled). Returns the pipeline result."""
    from pipelines.policy_setup import build_policy, publish_port_sets, published_dir
    from pipelines.runners import ExpectedCancel, pipeline_options

    policy = build_policy(settings, pipeline)
    # Agents resolve the named sets of the commands from here (agent.portset_dir, by default the same
    # directory): published before the first command can reach them.
    publish_port_sets(policy, published_dir(settings))
    options = pipeline_options(settings, streaming=True, runner=runner, extra=[NO_STATE_CACHE, *(extra or [])])
    p = beam.Pipeline(options=options)
    out = build_live(p, settings, pipeline, policy)
    tally(out.decisions, "decisions")
    tally(out.commands, "commands")
    result = p.run()
    if on_start is not None:
        on_start(result)
    # SIGTERM stops the run like Ctrl-C: the job is cancelled and the process exits normally, so
    # the Prism runner it started is stopped too (SIGTERM's default would leave it running).
    previous = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
            raise KeyboardInterrupt
        previous = signal.signal(signal.SIGTERM, _terminate)
    with ExpectedCancel() as quiet:
        if duration_s:
            quiet.cancelling()  # the runner cancels the job itself when the duration is over
        try:
            result.wait_until_finish(duration=int(duration_s * 1000) if duration_s else None)
        except KeyboardInterrupt:
            log.info("interrupted: cancelling the pipeline")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if not str(result.state).endswith(("DONE", "FAILED", "CANCELLED")):
                quiet.cancelling()
                result.cancel()
    return result


def run_replay(settings, pipeline: PipelineSettings, *, since: float, until: float, archive_dir: str = "",
               batch: bool = True):
    """Replay ``scanflow.events`` of ``[since, until)`` through the same stages on the FnApiRunner
    (``batch``: see :func:`build_replay`); nothing is sent to Kafka. Returns the finished result
    (see :func:`counters`)."""
    from pipelines.policy_setup import build_policy
    from pipelines.sources import ReadEvents

    policy = build_policy(settings, pipeline)
    p = beam.Pipeline(runner=replay_runner())
    items = p | "ReadEvents" >> ReadEvents(settings.kafka, settings.topics.events, settings.topics.dead_letter,
                                           start_time_ms=int(since * 1000), stop_time_ms=int(until * 1000))
    out, sweeps = build_replay(p, items, pipeline, policy, start=since, horizon=until, archive_dir=archive_dir,
                               batch=batch)
    tally(out.decisions, "decisions")
    tally(out.commands, "commands")
    tally(sweeps, "sweep_commands")
    result = p.run()
    result.wait_until_finish()
    return result
