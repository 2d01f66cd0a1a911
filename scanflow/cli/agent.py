"""``scanflow agent``: run a probe agent (consumer group), or scan given targets once (``--scan``).

Exit codes (docs/AGENT.md): 0 stopped cleanly; 1 a record could not be delivered, or the stop
overran its deadline (nothing more was committed: unfinished commands run again); 2 bad
configuration or input; 3 ``--scan`` with every target refused; 4 Kafka not ready (no broker
answers, or a topic the agent needs does not exist). Errors are one line naming the fix.

Stopping: the first SIGTERM/SIGINT stops taking commands and gives running scans
``agent.stop_grace_s``; the process is gone at most ``stop_grace_s`` + :data:`STOP_TAIL_S` seconds
after that first signal, whatever blocks it (a watchdog ends it with exit code 1 and commits nothing
more); a second signal abandons the running scans at once.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading

import click

from scanflow.cli import CliContext, pass_ctx
from scanflow.config import ConfigError, parse_set_options


def parse_ports(text: str) -> list[int]:
    """``"22,80,8000-8010"`` -> sorted unique ports; ``ConfigError`` on anything else."""
    ports: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ConfigError(f"--ports: {part!r} is not a port or a range like 8000-8010") from None
        if not 1 <= first <= last <= 65535:
            raise ConfigError(f"--ports: {part!r} is outside 1..65535")
        ports.update(range(first, last + 1))
    if not ports:
        raise ConfigError("--ports: give at least one port, e.g. --ports 22,80")
    return sorted(ports)


#: Seconds the orderly stop may take after the grace period (abandon, flush, commit, close) before
#: the watchdog ends the process.
STOP_TAIL_S = 4.0


class _StoppedEarly(Exception):
    """A signal arrived before the agent was running: nothing was taken, nothing to hand back."""


def _stop_early(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise _StoppedEarly


def scan_targets_of(texts: tuple[str, ...] | list[str]) -> list[str]:
    """``--scan`` values as canonical command targets; ``first-last`` ranges become CIDRs.
    ``ConfigError`` (one line, exit 2) names the first bad value and the forms accepted."""
    from probe_agent.targets import parse_target_spec

    out: list[str] = []
    for text in texts:
        for part in text.split(","):
            if not part.strip():
                continue
            try:
                out.extend(t.text for t in parse_target_spec(part))
            except ValueError as exc:
                raise ConfigError(f"--scan {exc}") from None
    if not out:
        raise ConfigError("--scan: give at least one target, e.g. --scan 198.18.7.10")
    return list(dict.fromkeys(out))


@click.command("agent")
@click.option("--backend", type=click.Choice(["connect", "masscan", "sim"]), default=None,
              help="Scanner backend (default: agent.backend, sim).")
@click.option("--allow", "allow", multiple=True, metavar="CIDR",
              help="Allowlist entry (repeatable). Nothing outside the allowlist is ever probed.")
@click.option("--exclude-file", default=None, help="Opt-out list: one CIDR per line, re-read when it changes.")
@click.option("--rate", "rate_pps", type=float, default=None, help="Packets/s cap of the agent.")
@click.option("--per-target-rate", "per_target_pps", type=float, default=None,
              help="Probes/s cap per address (politeness).")
@click.option("--contact", default=None, help="Contact string sent as User-Agent; name the operator "
              "and the page that publishes the scan's purpose.")
@click.option("--concurrency", type=int, default=None, help="Connections in flight at most (connect).")
@click.option("--shards", type=int, default=None, help="Split the work over N agents (with --shard).")
@click.option("--shard", type=int, default=None, help="This agent's shard, 0..N-1.")
@click.option("--seed", type=int, default=None, help="Seed of the pseudorandom probe order.")
@click.option("--interface", default=None, help="Send probes only through this network interface.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port (0: off).")
@click.option("--group", "group_id", default=None, help="Consumer group of the agents.")
@click.option("--agent-id", default=None, help="This agent's id in events (default: host name).")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
              help="Any agent setting, e.g. --set read_timeout_s=2 (repeatable; keys of [agent]).")
@click.option("--scan", "scan_targets", multiple=True, metavar="TARGET",
              help="Scan these targets once, publish the events and exit (no command topic): an address, "
                   "a CIDR range or a first-last range, e.g. 198.18.7.10-198.18.7.14 (repeatable).")
@click.option("--ports", default=None, help="Ports for --scan, e.g. 22,80,8000-8010 (at most 64).")
@click.option("--until-idle", type=float, default=None, metavar="SECONDS",
              help="Stop once no command has been waiting or running for this long.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="Log line format.")
@click.option("--progress/--no-progress", default=None, help="One-line progress display (default: on a terminal).")
@pass_ctx
def agent(obj: CliContext, scan_targets: tuple[str, ...], ports: str | None, until_idle: float | None,
          set_items: tuple[str, ...], progress: bool | None, **flags) -> None:
    """Run a probe agent: consume scan commands, probe safely and rate-limited, publish events.

    Without --scan it joins the agents' consumer group on the commands topic until SIGTERM (a second
    signal abandons running scans). With --scan it scans the given targets once. The topics it needs
    must exist (`scanflow topics create`); exit codes are listed in docs/AGENT.md.
    """
    import asyncio

    from probe_agent.settings import AgentSettings, settings_from_mapping

    base = getattr(obj.settings, "agent", None) or AgentSettings()
    values: dict[str, object] = {k: v for k, v in flags.items() if v is not None and k != "allow"}
    if flags.get("allow"):
        values["allowlist"] = ",".join(flags["allow"])
    values.update(parse_set_options(list(set_items)))
    if progress is not None:
        values["progress"] = "on" if progress else "off"
    settings = settings_from_mapping(values, base)
    if not settings.portset_dir:
        # Where a scheduler on this machine publishes its named port sets (pipelines.policy_setup).
        published = obj.settings.infra.state_path() / "portsets"
        published.mkdir(parents=True, exist_ok=True)
        settings = settings.replace(portset_dir=str(published)).validate()
    if scan_targets and not ports:
        raise ConfigError("--scan needs --ports, e.g. --ports 22,80")
    targets = scan_targets_of(scan_targets) if scan_targets else []
    port_list = parse_ports(ports) if ports else []
    if len(port_list) > 64:
        raise ConfigError(f"--ports: {len(port_list)} ports; at most 64 go inline in a command "
                          "(publish a port set and use agent commands for more)")
    # `kill -USR1 PID` writes every thread's stack to stderr (a stuck client call shows where it waits).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Until the agent runs, a signal simply ends the command (nothing was taken yet).
    previous = {sig: signal.signal(sig, _stop_early) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _require_topics(obj, settings, bool(targets))
        code = asyncio.run(_main(obj, settings, targets, port_list, until_idle))
    except _StoppedEarly:
        code = 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.exit(code)


def _require_topics(obj: CliContext, settings, one_scan: bool) -> None:
    """The topics this agent writes and reads must exist: one line naming the fix otherwise (a
    producer would block on a missing topic's metadata for a minute per record)."""
    from connectors.kafka_admin import require_topics

    t = obj.settings.topics
    needed = {} if one_scan else {"topics.commands": t.commands}
    needed.update({"topics.events": t.events, "topics.dead_letter": t.dead_letter})
    if not one_scan and settings.skip_tracked:
        needed["topics.ip_state"] = t.ip_state
    require_topics(obj.settings.kafka, needed)


def _arm_stop_deadline(seconds: float) -> None:
    """End the process ``seconds`` from now unless it ended by itself (the first signal's promise)."""
    def expire() -> None:
        sys.stderr.write(f"scanflow: error: the agent did not stop within {seconds:.0f} s of the signal; "
                         "exiting now without committing more (unfinished commands will run again); "
                         "where each thread was:\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


#: Seconds an agent stopped by events it could not deliver waits before it starts again.
RESTART_PAUSE_S = 5.0


def restart_reason(code: int, fatal: BaseException | None, stuck_restart_s: float) -> str | None:
    """Why an agent whose loop ended with ``code`` and ``fatal`` starts itself again (None: it
    exits). Only events that could not be delivered for a reason that can pass (the brokers away for
    longer than the producer's delivery timeout, e.g. an agent cut off from them) restart it:
    nothing was committed after them, so their commands run again. A failure that cannot pass (a
    record too large) ends the agent with the error, as before. Restarts are on when
    ``stuck_restart_s`` is (above 0)."""
    from connectors.kafka_io import DeliveryError

    if code == 0 or stuck_restart_s <= 0 or not isinstance(fatal, DeliveryError) or not fatal.retriable:
        return None
    return f"events were not delivered ({fatal}); their commands will run again"


def _restart_stuck(seconds: float) -> None:
    """(watchdog thread) The command loop has not turned for ``seconds``: start the agent again."""
    _restart_wedged(f"the agent's command loop has not turned for {seconds:.0f} s (a Kafka client call "
                    "that does not return)")


def _restart_wedged(reason: str) -> None:
    """Write where every thread is, then replace this process with a fresh agent (same arguments,
    same PID): new Kafka clients, a new group member. Nothing uncommitted is lost: its commands run
    again."""
    sys.stderr.write(f"scanflow: error: {reason}; starting the agent again. Where each thread was:\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(all_threads=True)
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    except OSError as exc:
        sys.stderr.write(f"scanflow: error: could not start the agent again ({exc}); exiting\n")
        sys.stderr.flush()
        os._exit(1)


async def _main(obj: CliContext, settings, scan_targets, port_list, until_idle) -> int:
    import asyncio
    import time
    import uuid

    from connectors.avro_codec import make_record
    from connectors.kafka_io import DeliveryError
    from probe_agent.backends import BackendError
    from probe_agent.banners import banner_line
    from probe_agent.core import Agent
    from probe_agent.metrics import MetricsServer, ProgressDisplay, setup_logging
    from probe_agent.watchdog import LoopWatchdog

    setup_logging(settings.log_format)
    try:
        agent_ = Agent(settings, obj.settings.kafka, obj.settings.topics)
        await agent_.open()
    except BackendError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:  # an unreadable exclusion file at start
        raise ConfigError(f"agent.exclude_file: {exc}") from None
    server = MetricsServer(agent_.metrics, settings.metrics_host, settings.metrics_port).start() \
        if settings.metrics_port else None
    show = settings.progress == "on" or (settings.progress == "auto" and sys.stderr.isatty())
    display = ProgressDisplay(agent_.metrics) if show else None
    if display is not None:
        setup_logging(settings.log_format, display=display)   # log lines blank the progress line first
    agent_.install_signal_handlers(on_first=lambda: _arm_stop_deadline(settings.stop_grace_s + STOP_TAIL_S))
    last = [0.0]

    def tick() -> None:
        if display is not None and time.monotonic() - last[0] >= 1.0:
            display.update()
            last[0] = time.monotonic()

    try:
        if not scan_targets:
            watchdog = LoopWatchdog(settings.stuck_restart_s, _restart_stuck).start() \
                if settings.stuck_restart_s > 0 else None

            def turn() -> None:
                tick()
                if watchdog is not None:
                    watchdog.turn()
            try:
                code = await agent_.run(until_idle_s=until_idle, on_tick=turn, on_wedged=_restart_wedged)
            finally:
                if watchdog is not None:
                    watchdog.stop()
            reason = restart_reason(code, agent_.fatal, settings.stuck_restart_s)
            if reason is not None:
                await asyncio.sleep(RESTART_PAUSE_S)       # no tight loop while the brokers are away
                _restart_wedged(reason)
            return code
        agent_.tracked.caught_up.set()  # a one-off scan is not a sweep; tracked IPs do not apply

        def show_record(schema: str, record: dict) -> None:
            if schema == "ScanEvent":
                click.echo(f"{record['ip']}:{record['port']}\t{record['kind']}\t"
                           f"{record['banner_protocol'] or ''}\t{banner_line(record['banner'])}")
            else:
                click.echo(f"{record['target']}\t{record['status']}\t{record['responses']} responses, "
                           f"{record['packets_sent']} packets, {record['bytes_sent']} bytes"
                           + (f" ({record['status_detail']})" if record["status_detail"] else ""))

        agent_.publisher.listeners.append(show_record)
        command = make_record("ScanCommand", command_id=f"cli-{uuid.uuid4().hex[:16]}",
                              issued_at=time.time_ns() // 1000, targets=list(scan_targets),
                              port_set={"name": None, "version": None, "ports": port_list})
        task = asyncio.create_task(agent_.execute(command))
        abandon_at = None
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            tick()
            if agent_.stop_requested and abandon_at is None:
                abandon_at = time.monotonic() + settings.stop_grace_s
            if abandon_at is not None and time.monotonic() >= abandon_at:
                agent_.abandon()
        tallies = task.result()
        try:
            agent_.publisher.close(STOP_TAIL_S if agent_.stop_requested else 30)
        except DeliveryError as exc:
            click.echo(f"scanflow: error: the scan's records were not all delivered to Kafka ({exc}); "
                       "check the broker (`scanflow infra status`) and scan again", err=True)
            return 1
        finally:
            await agent_.backend.close()
        refused = [t for t in tallies if t.status == "REFUSED"]
        if refused and len(refused) == len(tallies):
            detail = refused[0].detail or "refused"
            fix = "; scan inside the allowlist, or widen it with --allow CIDR" if "allowlist" in detail else ""
            click.echo(f"scanflow: error: every target was refused: {detail}{fix}", err=True)
            return 3
        return 0
    finally:
        if display is not None:
            display.finish()
        if server is not None:
            server.stop()


COMMANDS = [agent]
