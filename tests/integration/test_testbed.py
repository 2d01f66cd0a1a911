"""The testbed itself: what nmap and the wire see is what the testbed says it serves, silent
addresses stay silent (no ARP for them on the scanner's link, no ICMP), the daemons greet as
themselves, and everything is gone afterwards (also what a killed test process left)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.testbed import Testbed, sweep_stale, testbed_skip_reason
from tests.testbed.base import run


def require_testbed() -> None:
    reason = testbed_skip_reason()
    if reason:
        pytest.skip(reason)


def _ours() -> tuple[str, str]:
    return (run("ip", "netns", "list", check=False).stdout, run("ip", "-o", "link", check=False).stdout)


@pytest.mark.root
@pytest.mark.parametrize("layout", ["sparse24", "multi"])
def test_nmap_and_the_wire_see_exactly_the_truth(tmp_path, layout):
    require_testbed()
    with Testbed(tmp_path, layout=layout) as tb:
        ports = sorted(set(tb.live_ports) | {443, 7547, 8443, 9999})
        with tb.capture("nmap") as cap:
            found = tb.nmap(ports)
        if found is None:
            pytest.fail("nmap is missing: apt-get install nmap (infra/system-deps.sh)")
        names = (tb.router.name, tb.target.name, tb.scanner_if)
        # The daemons are the real ones.
        ssh = next(ip for ip, ports in tb.services.items() if any(s.kind == "sshd" for s in ports.values()))
        port = next(p for p, s in tb.services[ssh].items() if s.kind == "sshd")
        with socket.create_connection((ssh, port), 5) as s:
            assert s.recv(64).startswith(b"SSH-2.0-OpenSSH_")
    assert found == tb.open_pairs
    assert cap.dropped == 0
    assert cap.synacks() == tb.open_pairs
    packets = cap.packets()
    # Silent addresses: no ARP on the scanner's link (only the router is asked for), no ICMP back.
    assert set(cap.arp_requests_for()) <= {tb.router_ip}
    assert not [p for p in packets if p.proto == 1]
    silent = {p.dst for p in cap.sent_packets()} - set(tb.truth)
    assert len(silent) == tb.addresses() - len(tb.truth)
    assert not {p.src for p in packets if p.dst == tb.scanner_ip and p.proto > 0} & silent
    # Nothing is left behind.
    netns, links = _ours()
    assert not [n for n in names if n in netns or n in links]


@pytest.mark.root
def test_a_killed_test_process_leaves_nothing_behind(tmp_path):
    require_testbed()
    code = ("import sys, time; from pathlib import Path; from tests.testbed import Testbed\n"
            "tb = Testbed(Path(sys.argv[1]), layout='sparse24').__enter__()\n"
            "print(tb.router.name, tb.target.name, tb.scanner_if, flush=True); time.sleep(600)\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=repo, env={**os.environ, "PYTHONPATH": repo}, start_new_session=True)
    try:
        names = proc.stdout.readline().split()
        assert len(names) == 3, "the testbed did not come up in the child process"
        netns, links = _ours()
        assert names[0] in netns and names[1] in netns and names[2] in links
    finally:
        os.killpg(proc.pid, signal.SIGKILL)    # no clean-up code runs
        proc.wait()
    time.sleep(0.2)
    netns, links = _ours()
    assert names[1] in netns                     # still there: its daemons keep it alive
    sweep_stale()
    netns, links = _ours()
    assert not [n for n in names if n in netns or n in links]
