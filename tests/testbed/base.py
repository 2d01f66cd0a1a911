"""Namespace primitives shared by the test networks: commands, the root check, free /24s, the sweep.

Every namespace a test makes is named ``sfa-<pid>-<hex tag>`` after the process that made it, and
every host-side interface of the testbed carries that name as its alias, so :func:`sweep_stale`
can remove what a test process that died left behind (its namespaces, the processes still running
in them, and the host ends of their links).

Only 198.18.0.0/15 (RFC 2544, benchmarking) is ever used, and only /24s that no route, address or
rule of the host touches yet (:func:`free_slash24s`); the choice is made under a lock file so that
two test processes on one machine do not take the same /24.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

PREFIX = "sfa"
BENCH_NET = ipaddress.IPv4Network("198.18.0.0/15")
LOCK_FILE = Path("/run/lock/scanflow-testnet.lock")
_NAME = re.compile(rf"{PREFIX}-(\d+)-[0-9a-f]+")


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a short command; raise with its stderr when it fails (unless ``check`` is False)."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


def root_skip_reason() -> str | None:
    """Why namespace tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs these as root)"
    if not shutil.which("ip"):
        return "needs iproute2's `ip` to create network namespaces"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def stop_processes(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM each process group, SIGKILL what is left after ``grace_s``; empties ``procs``."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    procs.clear()


def kill_namespace_processes(name: str) -> None:
    """SIGKILL every process still running inside namespace ``name`` (one of ours)."""
    pids = run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(int(p))]
        if pids:
            time.sleep(0.05)


def sweep_stale() -> None:
    """Delete what test processes of ours that died left behind: their namespaces (and the
    processes still running in them, which would keep a deleted namespace and its links alive) and
    host-side interfaces whose alias names a namespace of a dead process."""
    listing = run("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.fullmatch(name)
        if m and not _alive(int(m.group(1))):
            kill_namespace_processes(name)
            run("ip", "netns", "del", name, check=False)
    links = run("ip", "-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        m = re.search(r"^\d+: ([^:@ ]+).*\balias (\S+)", line)
        if m:
            owner = _NAME.fullmatch(m.group(2))
            if owner and not _alive(int(owner.group(1))):
                run("ip", "link", "del", m.group(1), check=False)


def used_slash24s() -> set[int]:
    """Indexes (0..511) of the /24s of 198.18.0.0/15 that any route, address or rule of the host
    (every table) touches, including routes that cover them from a shorter prefix."""
    text = "\n".join(run(*cmd, check=False).stdout for cmd in (
        ("ip", "-4", "route", "show", "table", "all"), ("ip", "-4", "addr", "show"),
        ("ip", "-4", "rule", "show")))
    used: set[int] = set()
    base = int(BENCH_NET.network_address)
    for token in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?", text):
        try:
            net = ipaddress.IPv4Network(token, strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0 or not net.overlaps(BENCH_NET):
            continue
        lo = max(int(net.network_address), base)
        hi = min(int(net.broadcast_address), int(BENCH_NET.broadcast_address))
        used.update(range((lo - base) >> 8, ((hi - base) >> 8) + 1))
    return used


def slash24(index: int) -> ipaddress.IPv4Network:
    """The /24 number ``index`` (0..511) of 198.18.0.0/15."""
    return ipaddress.IPv4Network((int(BENCH_NET.network_address) + (index << 8), 24))


def free_slash24s(count: int, rng: random.Random | None = None) -> list[ipaddress.IPv4Network]:
    """``count`` distinct /24s of 198.18.0.0/15 that nothing on the host uses (call under
    :func:`network_lock` and install the routes before releasing it)."""
    used = used_slash24s()
    choices = [i for i in range(1, 512) if i not in used and i != 255 and i != 256]
    if len(choices) < count:
        raise RuntimeError(f"only {len(choices)} free /24s left in {BENCH_NET} for a test network")
    return [slash24(i) for i in (rng or random).sample(choices, count)]


@contextlib.contextmanager
def network_lock():
    """Serialise the choice of free /24s between test processes of this machine."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
