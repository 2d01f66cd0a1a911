"""The child processes of ``scanflow run``: each started in its own session with its log in
``<run dir>/logs/``, watched (one that dies ends the run), its peak memory sampled, and stopped: in
order at the end of the virtual period (agents, then the scheduler, then Prism), all at once when the
run is interrupted. SIGTERM of the orchestrator is turned into an interruption like Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from scanflow.loop.spec import LoopError


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


def proc_status_kb(pid: int, key: str) -> int:
    """``VmHWM`` / ``VmRSS`` of a process from /proc (kB; 0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def child_env() -> dict[str, str]:
    """The environment of every child ``scanflow``."""
    env = dict(os.environ)
    # Children report through their logs; an unbuffered stdout keeps those logs current.
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Children:
    """The run's child processes (``prism``, ``scheduler`` or ``scheduler-<j>``, ``agent-<k>``), in the
    order started.

    ``announce_stop`` is called when the orderly stop begins; ``drain_scheduler`` waits (bounded)
    until the scheduler has read the last events, before it is stopped."""

    def __init__(self, logs: Path, *, announce_stop: Callable[[], None], drain_scheduler: Callable[[], None]):
        self.logs = logs
        self.announce_stop = announce_stop
        self.drain_scheduler = drain_scheduler
        self.procs: list[Proc] = []
        self.peak_kb: dict[str, int] = {}

    def spawn(self, name: str, cmd: list[str]) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        log = open(log_path, "a", buffering=1)
        log.write(f"# {' '.join(cmd)}\n")
        # A new session: a Ctrl-C in the terminal reaches the orchestrator only, which then stops
        # the children in order (agents before the scheduler) instead of all at once.
        popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=child_env(), start_new_session=True)
        proc = Proc(name, popen, log_path, log)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise LoopError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}:\n"
                                f"{proc.tail()}")

    def sample_memory(self) -> None:
        for proc in self.procs:
            if proc.alive():
                self.peak_kb[proc.name] = max(self.peak_kb.get(proc.name, 0),
                                              proc_status_kb(proc.popen.pid, "VmHWM"))

    def rss_kb(self) -> dict[str, int]:
        """Current resident memory of every live child (kB)."""
        return {p.name: proc_status_kb(p.popen.pid, "VmRSS") for p in self.procs if p.alive()}

    # ---- stopping -------------------------------------------------------------------------
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

    def stop_all_quietly(self) -> None:
        """:meth:`stop_all` when a failure is already on its way out: no stop step may replace it."""
        if not any(p.alive() for p in self.procs):
            return
        try:
            self.stop_all()
        except BaseException:  # noqa: BLE001 - stop_all killed what was left; the failure is reported
            pass

    def _stop_in_order(self) -> None:
        agents = [p for p in self.procs if p.name.startswith("agent-")]
        self.announce_stop()
        for p in agents:
            if p.alive():
                p.popen.send_signal(signal.SIGTERM)
        for p in agents:
            p.stop(60)
        scheduler = [p for p in self.procs if p.name == "scheduler" or p.name.startswith("scheduler-")]
        if any(p.alive() for p in scheduler):
            try:
                self.drain_scheduler()
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


def sigterm_interrupts() -> Callable[[], None]:
    """SIGTERM of the orchestrator interrupts it like Ctrl-C (an orderly stop, the topics
    deleted) instead of killing it with its children left running. Returns the undo."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)
