"""The scheduler process of ``scanflow run``: the live Beam scheduler on a Prism job server.

Run as ``python -m scanflow.loop.scheduler SPEC.json`` by :mod:`scanflow.loop.launch`, never
imported by the core: Beam and the ``pipelines`` package are imported inside :func:`main` only.

The spec (JSON, written by the orchestrator) names the run's topics, the sweep ranges, the lake
directory for observations and decisions, the Prism endpoint and the time scale. Time is compressed
the way the closed-loop test compresses it: every duration of the policy (back-off ladder, silent
sweep period, standard and retry intervals; the adaptive policy's cadence, follow-up delay and
device memory) is multiplied by ``scale`` (wall seconds per virtual
second), so one virtual day passes in ``86400 * scale`` wall seconds while the pipeline keeps its
ordinary wall-clock watermark.

The policy is ``[policy] name`` (``adaptive`` unless configured; ``scanflow run --policy`` sets it).
Before the pipeline starts, the policy's named port sets are written to ``portset_dir`` (the agents
resolve named sets there); once the job is submitted, ``ready`` is written so the orchestrator knows
when to start the clock. SIGTERM or SIGINT cancels the job and exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

log = logging.getLogger("scanflow.loop.scheduler")


def scaled_policy(policy, scale: float):
    """``policy`` (:class:`scanflow.config.PolicySettings`) with every duration times ``scale``."""
    return dataclasses.replace(
        policy,
        ladder_hours=tuple(h * scale for h in policy.ladder_hours),
        silent_interval_h=policy.silent_interval_h * scale,
        standard_interval_h=policy.standard_interval_h * scale,
        retry_interval_h=policy.retry_interval_h * scale,
        # 0 means "recall off"; scaling keeps it off.
        recall_interval_h=policy.recall_interval_h * scale,
        recall_for_h=policy.recall_for_h * scale,
        # the adaptive policy's: light cadence, follow-up delay (minutes become fractions of a
        # wall second at 20 s a day), device memory
        cadence_h=policy.cadence_h * scale,
        followup_delay_s=policy.followup_delay_s * scale,
        memory_for_h=policy.memory_for_h * scale,
        exploited_cap_h=policy.exploited_cap_h * scale)


def pipeline_settings_for(spec: dict):
    """The scheduler's :class:`pipelines.settings.PipelineSettings` for a run spec."""
    from pipelines.settings import PipelineSettings

    scale = spec["scale"]
    # Floors keep the pipeline's bookkeeping sane when a virtual hour is under a wall second: a
    # round timeout only matters for a lost ScanDone, and a dedupe horizon shorter than Kafka's
    # redelivery window would let a replayed round count twice.
    round_timeout = max(3600 * scale, 30.0)
    return PipelineSettings(
        sweep_ranges=tuple(spec["sweep_ranges"]), sweep_prefix=spec["sweep_prefix"],
        sweep_tick_s=spec.get("sweep_tick_s", 1.0), round_timeout_s=round_timeout,
        command_ttl_s=max(6 * 3600 * scale, 30.0), dedupe_horizon_s=max(24 * 3600 * scale, 120.0),
        rewind_s=2 * round_timeout, group_id=spec["group_id"], watermark_lag_s=1.0,
        archive_dir=spec["lake_dir"], catch_up=spec.get("catch_up", True),
        first_pass=spec.get("first_pass", False),
        # An address that answered a sweep is promoted this long after its last answer: 10 virtual
        # minutes, at least two seconds (the watermark trails the newest record by one).
        sweep_gather_s=max(600 * scale, 2.0),
        first_pass_window_s=spec.get("first_pass_window_s", 0.0),
        # one of several scheduler jobs (pipelines.partitions): its share of the events partitions
        partitions=spec.get("partitions", "")).validate()


def main(argv: list[str]) -> int:
    """Run the scheduler described by the spec file ``argv[0]`` until signalled."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python logs every connection at INFO; the log should show the pipeline, not the sockets.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    spec = json.loads(Path(argv[0]).read_text())

    import apache_beam as beam

    from pipelines.policy_setup import build_policy, publish_port_sets
    from pipelines.runners import ExpectedCancel, final_state, pipeline_options
    from pipelines.scheduler import NO_STATE_CACHE, build_live, tally
    from scanflow.config import load_settings, parse_set_options

    settings = load_settings(spec.get("config_file"), parse_set_options(spec.get("set", [])))
    settings = dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, **spec["topics"]),
                                   policy=scaled_policy(settings.policy, spec["scale"]))
    ps = pipeline_settings_for(spec)
    policy = build_policy(settings, ps)
    publish_port_sets(policy, Path(spec["portset_dir"]))

    options = pipeline_options(settings, streaming=True, runner="prism",
                               extra=[NO_STATE_CACHE, f"--job_endpoint={spec['job_endpoint']}"])
    p = beam.Pipeline(options=options)
    out = build_live(p, settings, ps, policy, now=spec["start"])
    tally(out.decisions, "decisions")
    tally(out.commands, "commands")

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    result = p.run()
    ready = "running\n"
    try:  # the job's counters for Prometheus (and the dashboard's overview), on a free loopback port
        from pipelines.metrics_endpoint import start_metrics_server

        server = start_metrics_server(result, "127.0.0.1", int(spec.get("metrics_port", 0)))
        ready += f"metrics http://127.0.0.1:{server.server_address[1]}/metrics\n"
    except Exception:  # noqa: BLE001 - observability is never a reason not to schedule
        log.warning("no metrics endpoint", exc_info=True)
    Path(spec["ready_file"]).write_text(ready)
    log.info("scheduler running: %s -> %s", settings.topics.events, settings.topics.commands)
    with ExpectedCancel() as quiet:
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            log.info("stop requested: cancelling the pipeline")
        finally:
            if not str(result.state).endswith(("DONE", "FAILED", "CANCELLED")):
                quiet.cancelling()
                try:
                    result.cancel()
                except Exception:  # noqa: BLE001 - the job server may already be gone at shutdown
                    log.warning("cancel failed", exc_info=True)
    log.info("scheduler: %s", final_state(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
