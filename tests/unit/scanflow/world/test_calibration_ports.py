"""Calibration of the port law: the paper's derivation (scanflow.portsets) run on an emulated full-port
survey of the synthetic internet gives the paper's ranking and port-set sizes."""

from __future__ import annotations

import pytest

from scanflow.knowledge import load_knowledge
from scanflow.portsets import derive_port_sets
from scanflow.world import SURVEY_IPS, SURVEY_RESPONSIVE_FRACTION, TABLE1_PORTS, WorldConfig, survey_world


@pytest.fixture(scope="module")
def derivation():
    # the paper's Dec 2018 full-port scan: ~12 M addresses, 328,240 (2.7 %) answering
    kb = load_knowledge()
    table = survey_world(WorldConfig(), 0, n_ips=SURVEY_IPS, responsive_fraction=SURVEY_RESPONSIVE_FRACTION, kb=kb)
    return derive_port_sets(table, device_ports=kb.device_ports(), malware_ports=kb.malware_ports(),
                            created="2018-12-31")


def test_the_survey_has_the_papers_responsive_count(derivation):
    assert abs(derivation.responsive_ips - 328_240) < 3 * 328_240 ** 0.5 + 1
    assert 3.2 < derivation.threshold_ips < 3.4  # 0.001 % of the responsive IPs, as in Table 2


def test_the_top_ten_ports_are_table_1(derivation):
    assert tuple(p for p, _ in derivation.ranking[:10]) == TABLE1_PORTS


def test_about_11000_standard_ports(derivation):
    # Table 2: ports answered by at least 0.001 % of responsive IPs, honeypots dropped: ~11,000
    assert 9_900 <= len(derivation.standard) <= 12_100


def test_about_500_ports_reach_95_percent_device_detection(derivation):
    # Figure 5
    assert 400 <= len(derivation.silent) <= 600
    assert derivation.ddr_curve[len(derivation.silent) - 1] >= 0.95


def test_about_5100_ports_reach_97_percent_port_detection_for_unknown_devices(derivation):
    # Figure 3: device + malware ports + the top of the ranking, grown to 97 %
    assert 4_350 <= len(derivation.unknown) <= 5_850
    assert derivation.unknown.ports <= derivation.standard.ports | load_knowledge().device_ports() | \
        load_knowledge().malware_ports()


def test_honeypots_are_about_0_2_percent_of_the_survey(derivation):
    share = derivation.honeypot_ips / derivation.responsive_ips
    assert 0.0015 <= share <= 0.0025
