"""A real-network testbed for the scanner's tests and benchmarks (root; see docs/TESTBED.md).

    from tests.testbed import Testbed, testbed_skip_reason
    with Testbed(tmp_path, layout="sparse24") as tb:     # or "multi", "samelink"; skips without root
        tb.blocks, tb.truth, tb.scanner_if, tb.scanner_ip, tb.router_mac
        with tb.capture("scan") as cap:
            ...                                          # the scan
        cap.synacks(), cap.sent(), cap.arp()
        tb.nmap(ports)
"""

from tests.testbed.base import root_skip_reason, sweep_stale
from tests.testbed.bed import LAYOUTS, Service, Testbed, require_testbed, testbed_skip_reason
from tests.testbed.capture import Capture, Packet, read_pcap

__all__ = ["Capture", "LAYOUTS", "Packet", "Service", "Testbed", "read_pcap", "require_testbed",
           "root_skip_reason", "sweep_stale", "testbed_skip_reason"]
