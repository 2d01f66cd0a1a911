"""What the exploration benches (``explore_*.py``) share: the adaptive policy's runs under
``docs/EVALUATION.md``'s conditions (desynchronised, 1 % loss; the whole period, then 2 weeks), the
scenario argument, and the traffic-against-coverage figure."""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path


def scenario_names(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """The scenarios named in ``text`` (comma-separated); a one-line argparse error naming the known ones."""
    from scanflow.scenarios import SCENARIOS

    names = text.split(",")
    if any(n not in SCENARIOS for n in names):
        ap.error(f"--scenarios: choose among {', '.join(SCENARIOS)}")
    return names


def scenario_sets(name: str, ips: int, kb):
    """The port sets derived for scenario ``name`` (what ``scanflow evaluate`` derives)."""
    from scanflow.evaluation import EvaluationConfig, derive_policy_sets
    from scanflow.scenarios import scenario

    return derive_policy_sets(EvaluationConfig(world=scenario(name).config(), ips=ips), kb)[0]


def adaptive_run(name: str, ips: int, weeks: float, seed: int, sets, kb):
    """One seed of the adaptive policy in scenario ``name`` over ``weeks`` and 2 weeks: its
    :class:`scanflow.evaluation.SeedResult` and the seconds it took."""
    from scanflow.evaluation import EvaluationConfig, evaluate_seed
    from scanflow.scenarios import scenario

    cfg = EvaluationConfig(ips=ips, weeks=weeks, windows=(2.0, weeks), seeds=(seed,), loss=0.01, desync=True,
                           world=scenario(name).config(), scenario=name, policy="adaptive", record=False)
    t0 = time.perf_counter()
    result = evaluate_seed(cfg, seed, sets, kb)
    return result, time.perf_counter() - t0


@contextmanager
def figure(path: Path, weeks: float, ylabel: str, title: str):
    """Axes for traffic (x, % of the standard scan over ``weeks``) against ``ylabel``; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    yield ax
    ax.set_xlabel(f"traffic, % of the standard scan ({weeks:g} weeks)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
