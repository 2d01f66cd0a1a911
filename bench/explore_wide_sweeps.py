"""What wider sweeps where sporadic devices live would buy: ``python bench/explore_wide_sweeps.py``.

In ``sporadic-heavy`` the adaptive policy misses its DDR target (94.1 % against 96 %) because of
devices that are on-line 8 % of the time and open no port of the light set: only a probe of their
rare port while they are on-line finds them. Issue 16's first mechanism asks for sweeps sized per
prefix "where the data supports it". This bench measures the best any such rule could do: an
*oracle* that knows which /24s hold sporadic devices (the world's own ground truth, which no scan
has) and sweeps every silent address there with the top ``--wide`` ranked ports instead of the
light set; every other /24 keeps the adaptive policy as it is. A learned rule can only pick those
prefixes less well, so if the oracle cannot reach the target within the traffic budget, no per-prefix
sweep set can.

It is an exploration, not a policy option: the policy is the adaptive one with ``sweep_set(ip)``
added (the simulator sweeps each /24 with it, :func:`scanflow.simulate._sweep_of`), nothing of it runs
in the pipelines. Conditions are ``docs/EVALUATION.md``'s (desynchronised, 1 % loss), seed 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from explore_common import adaptive_run, figure, scenario_names, scenario_sets  # noqa: E402

from scanflow.adaptive import AdaptivePolicy  # noqa: E402
from scanflow.policy import Reason  # noqa: E402
from scanflow.portsets import PortSet  # noqa: E402
from scanflow.world.blocks import BLOCK_SIZE  # noqa: E402
from scanflow.world.dynamics import SPORADIC  # noqa: E402


class WideSweeps(AdaptivePolicy):
    """The adaptive policy, sweeping the silent addresses of the /24s in ``wide_blocks`` (address
    index // 256) with ``wide`` instead of the light set."""

    wide: PortSet
    wide_blocks: frozenset

    def sweep_set(self, ip) -> PortSet:
        return self.wide if int(ip) // BLOCK_SIZE in self.wide_blocks else self.port_sets.light

    def _silent(self, state, obs, now, ip):
        new, plan = super()._silent(state, obs, now, ip)
        if ip is not None and plan.reason is Reason.SWEEP and not new.recall:
            plan = replace(plan, ports=self.sweep_set(ip))
        return new, plan


def sporadic_blocks(world) -> frozenset:
    """The /24s (address index // 256) where a sporadic device answers at some time of the run."""
    seg = world.segments
    return frozenset(np.unique(seg.ip[seg.cls == SPORADIC] // BLOCK_SIZE).tolist())


def run(scenario: str, wide: int, ips: int, weeks: float, seed: int, sets, kb) -> tuple[list, float, int, float]:
    """The adaptive runs of ``scenario`` (``weeks``, then 2 weeks), wide sweeps of ``wide`` ports in
    the sporadic /24s (0: none); their window metrics, the share of addresses in those /24s, the most
    probes an address got in a slot, and the seconds taken."""
    import scanflow.adaptive as adaptive
    import scanflow.evaluation as evaluation

    ranked = [p if isinstance(p, int) else p[0] for p in sets.ranking]
    wide_set = PortSet.named("wide-sweep", 1, ranked[:wide]) if wide else None
    seen: dict = {}
    generate, make_policy = evaluation.World.generate, adaptive.make_policy

    def world_of(*a, **kw):
        world = generate(*a, **kw)
        seen["blocks"] = sporadic_blocks(world)
        seen["share"] = len(seen["blocks"]) * BLOCK_SIZE / world.n_ips
        return world

    def policy_of(*a, **kw):
        policy = make_policy(*a, **kw)
        if wide_set is not None:
            policy.__class__ = WideSweeps
            policy.wide, policy.wide_blocks = wide_set, seen["blocks"]
        return policy

    # patch.object puts World.generate back as the classmethod it was (a plain assignment would leave
    # a bound method on the class)
    with patch.object(evaluation.World, "generate", world_of), patch.object(adaptive, "make_policy", policy_of):
        result, secs = adaptive_run(scenario, ips, weeks, seed, sets, kb)
    return result.windows, seen.get("share", 0.0) if wide else 0.0, result.efficient.max_slot_probes, secs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ips", type=int, default=100_000)
    ap.add_argument("--weeks", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenarios", default="sporadic-heavy")
    ap.add_argument("--wide", default="0,527,893,1500", help="port counts of the wide sweep set (0: none)")
    ap.add_argument("--plot", default="out/explore_wide_sweeps.png", help="traffic against DDR, one point per run")
    args = ap.parse_args(argv)
    from scanflow.knowledge import load_knowledge

    names = scenario_names(ap, args.scenarios)
    try:
        sizes = [int(w) for w in args.wide.split(",")]
    except ValueError:
        ap.error("--wide: give port counts separated by commas, e.g. 0,527,893")
    if any(w < 0 for w in sizes):
        ap.error("--wide: port counts are 0 or more")
    kb = load_knowledge()
    rows = []
    print("scenario | wide ports | addresses in wide /24s | window | traffic | PDR | DDR | max probes/slot | s",
          flush=True)
    for name in names:
        sets = scenario_sets(name, args.ips, kb)
        for wide in sizes:
            windows, share, slot_max, secs = run(name, wide, args.ips, args.weeks, args.seed, sets, kb)
            for w in windows:
                rows.append((name, wide, w.weeks, w.traffic_ratio, w.pdr, w.ddr))
                print(f"{name} | {wide or 'light only'} | {100 * share:.1f} % | {w.weeks:g}w | "
                      f"{100 * w.traffic_ratio:.2f} % | {100 * w.pdr:.1f} % | {100 * w.ddr:.1f} % | "
                      f"{slot_max:,} / {len(sets.standard):,} | {secs:.0f}", flush=True)
    if args.plot:
        _plot(rows, Path(args.plot), args.weeks)
        print(f"wrote {args.plot}")
    return 0


def _plot(rows, path: Path, weeks: float) -> None:
    title = "Wider sweeps in the /24s that hold sporadic devices (oracle)"
    with figure(path, weeks, "DDR, % (target 96 %)", title) as ax:
        for i, name in enumerate(dict.fromkeys(r[0] for r in rows)):
            pts = sorted((100 * r[3], 100 * r[5], r[1]) for r in rows if r[0] == name and abs(r[2] - weeks) < 1e-9)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=name)
            for x, y, wide in pts:
                ax.annotate(str(wide or "light"), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.axvline(2.5, color="grey", ls="--", lw=0.8)
        ax.axhline(96.0, color="grey", ls=":", lw=0.8)
        ax.text(2.52, ax.get_ylim()[0], " traffic budget 2.5 %", fontsize=7, va="bottom", color="grey")
        ax.legend(fontsize=8)


if __name__ == "__main__":
    raise SystemExit(main())
