"""The connect backend's view of the scanner's link (what decides whether a failed probe's SYNs
reached the wire), read from files in the kernel's /proc formats. The wire itself is checked on the
testbed (tests/integration/test_testbed_agent.py)."""

from __future__ import annotations

from probe_agent.backends.connect import Neighbours

ARP = """IP address       HW type     Flags       HW address            Mask     Device
198.18.7.1       0x1         0x2         02:00:00:00:00:01     *        eth1
198.18.7.41      0x1         0x0         00:00:00:00:00:00     *        eth1
"""
# /proc/net/route: addresses and masks in host byte order (little-endian), flags 0x3 = UP|GATEWAY.
ROUTE = """Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	00000000	010200C0	0003	0	0	0	00000000	0	0	0
eth1	000712C6	00000000	0001	0	0	0	00FFFFFF	0	0	0
eth1	002512C6	010712C6	0003	0	0	0	00FFFFFF	0	0	0
*	002612C6	00000000	0201	0	0	0	00FFFFFF	0	0	0
"""


def test_on_link_addresses_without_a_resolved_neighbour_never_sent_a_syn(tmp_path):
    (tmp_path / "arp").write_text(ARP)
    (tmp_path / "route").write_text(ROUTE)
    n = Neighbours(arp=str(tmp_path / "arp"), route=str(tmp_path / "route"))
    assert not n.unresolved("198.18.7.1")      # resolved neighbour: its SYNs left
    assert n.unresolved("198.18.7.41")         # ARP pending or failed: they did not
    assert n.unresolved("198.18.7.99")         # on the link, entry gone (a failed one is collected)
    assert not n.unresolved("198.18.37.5")     # routed via a gateway: the gateway's ARP, not its own
    assert not n.unresolved("198.18.38.5")     # a reject route is not a link
    assert not n.unresolved("203.0.113.9")     # the default route
    assert not n.unresolved("2001:db8::1")     # IPv6: no ARP


def test_missing_proc_files_change_nothing(tmp_path):
    n = Neighbours(arp=str(tmp_path / "none"), route=str(tmp_path / "none"))
    assert not n.unresolved("198.18.7.41")
