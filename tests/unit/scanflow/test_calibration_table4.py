"""Calibration to the paper's Table 4: its own method, run under its conditions (the two scans
desynchronised within each 12 h round, 1 % of probes lost), gets the PDR the paper measured on the
real network: 2 weeks 94.9 % and 96.5 % (two runs), 8 weeks 94.3 %, each within about 1.5 points,
averaged over seeds; each window from a run of its own length. The world's sporadic share, dynamic
share and static tenure are fitted to it (docs/WORLD.md); the pre-calibration world fails it."""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.evaluation import EvaluationConfig, derive_policy_sets, evaluate_seed
from scanflow.policy import PolicyPortSets
from scanflow.scenarios import scenario

IPS = 30_000
PAPER_CONDITIONS = dict(desync=True, loss=0.01)


@pytest.fixture(scope="module")
def port_sets():
    derivation, _ = derive_policy_sets(EvaluationConfig(ips=IPS))
    return PolicyPortSets(derivation.standard, derivation.silent, derivation.unknown)


def _pdr(port_sets, world=None, seeds=(1, 2, 3), windows=(2.0, 8.0)) -> dict[float, float]:
    cfg = EvaluationConfig(ips=IPS, weeks=8.0, windows=windows, seeds=seeds, record=False, world=world,
                           **PAPER_CONDITIONS)
    by_window: dict[float, list[float]] = {}
    for seed in seeds:
        for m in evaluate_seed(cfg, seed, port_sets).windows:
            by_window.setdefault(m.weeks, []).append(m.pdr)
    return {w: float(np.mean(v)) for w, v in by_window.items()}


def test_the_papers_method_under_its_conditions_gets_table_4s_pdr(port_sets):
    pdr = _pdr(port_sets)
    assert 0.949 - 0.015 <= pdr[2.0] <= 0.965 + 0.015, pdr
    assert 0.943 - 0.015 <= pdr[8.0] <= 0.943 + 0.015, pdr


def test_the_pre_calibration_world_contradicts_table_4(port_sets):
    pdr = _pdr(port_sets, world=scenario("sporadic-heavy").config(), seeds=(1,), windows=(8.0,))
    assert pdr[8.0] < 0.943 - 0.05, pdr
