"""What keeping a moved device's state would buy: ``python bench/explore_moves.py [--ips 100000]``.

Issue 16's mechanism 4 ("devices that move"): a known device that reappears at another address of
its /24 keeps its estimate and back-off step there, instead of being classified again. This is an
exploration, not a policy option: it wraps the simulator's one per-IP lifecycle with a per-/24
directory of devices that left an address, so that ``scanflow evaluate``'s adaptive runs can be
measured with and without it. Nothing of it runs in the pipelines.

The directory, per /24:

- a device *leaves* an address when a tracked address goes silent (the policy remembers it there)
  or when the address answers as another device (a new estimate or other open ports);
- a *new* answer at an address (a new responder, or a change the policy would follow up) is looked
  up among the devices that left another address of the /24 within ``memory_for``: a device matches
  when it is the same device by the policy's own test for a returning device (the same open ports
  and banner digests on the ports probed). A match replaces the address's state with the device's
  remembered one, so the policy resumes it (no follow-up; its next probe is a full one).

``--rule`` says which matches count: ``any`` takes the most recent match; ``unique`` only a single
match, and only when the answer has banners (pools of one ISP's routers answer alike, so a match on
ports alone names a model, not a device); ``off`` is the adaptive policy as it is. Conditions are
``docs/EVALUATION.md``'s (desynchronised, 1 % loss); one process per run, seed 1 unless ``--seeds``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from explore_common import adaptive_run, figure, scenario_names, scenario_sets  # noqa: E402
from scanflow.adaptive import AdaptivePolicy, _put  # noqa: E402
from scanflow.fingerprint import port_digests  # noqa: E402
from scanflow.lifecycle.state import Tracked  # noqa: E402
from scanflow.lifecycle.step import Lifecycle  # noqa: E402
from scanflow.policy import IpState, IpStatus, Observation  # noqa: E402
from scanflow.world.blocks import BLOCK_SIZE  # noqa: E402

RULES = ("off", "unique", "any")


def remembered(state: IpState) -> IpState:
    """``state`` as the policy remembers a device that went silent (its ports kept as ``recall``)."""
    return _put(state, status=IpStatus.NON_RESPONSIVE, open_ports=frozenset(), recall=state.open_ports)


class MoveDirectory:
    """Per /24: (address, remembered state, when it left) of the devices that left an address."""

    def __init__(self, memory_for: float):
        self.memory_for = memory_for
        self._left: dict[int, list[tuple[int, IpState, float]]] = {}
        self.stats: Counter = Counter()

    def left(self, ip: int, state: IpState, at: float) -> None:
        self._left.setdefault(ip // BLOCK_SIZE, []).append((ip, state, at))
        self.stats["left"] += 1

    def take(self, policy: AdaptivePolicy, ip: int, obs: Observation, digests, now: float, rule: str) -> IpState | None:
        """The remembered state of the device ``obs`` (banner ``digests``) shows at ``ip``, taken out of
        the directory; None when no device (or, with ``unique``, not exactly one) of another address matches."""
        entries = self._left.get(ip // BLOCK_SIZE)
        if not entries:
            return None
        hits = [j for j in range(len(entries) - 1, -1, -1)
                if entries[j][0] != ip and now - entries[j][2] <= self.memory_for
                and policy._same_device(entries[j][1], obs, digests)]
        if not hits:
            return None
        if rule == "unique" and (len(hits) > 1 or not digests):
            self.stats["ambiguous" if len(hits) > 1 else "no banner"] += 1
            return None
        self.stats["kept"] += 1
        return entries.pop(hits[0])[1]


class MovingLifecycle(Lifecycle):
    """The per-IP lifecycle with the directory consulted before, and fed after, each decision."""

    def __init__(self, policy, directory: MoveDirectory, rule: str, **kw):
        super().__init__(policy, **kw)
        self.directory, self.rule = directory, rule

    def observe(self, ip, t: Tracked | None, obs: Observation, now: float, scan_id: str | None = None):
        policy = self.policy
        state = t.state if t is not None else None
        digests = port_digests(obs.banners) if self.rule != "off" and obs.open_ports else None
        if digests is not None and self._new_here(state, obs, digests):
            moved = self.directory.take(policy, ip, obs, digests, now, self.rule)
            if moved is not None:
                if state is not None and state.responsive:   # the device it replaced left this address
                    self.directory.left(ip, remembered(state), now)
                t = Tracked(moved, now, None, False, now, now, ()) if t is None else t.with_(state=moved)
        tracked, decided = super().observe(ip, t, obs, now, scan_id)
        prev, new = decided.previous, decided.state
        if self.rule != "off" and prev is not None and prev.responsive:
            if not new.responsive and new.recall:
                self.directory.left(ip, new, now)
            elif new.responsive and decided.plan.changed and (new.device != prev.device
                                                              or new.open_ports != prev.open_ports):
                self.directory.left(ip, remembered(prev), now)
        return tracked, decided

    def _new_here(self, state: IpState | None, obs: Observation, digests) -> bool:
        """The answer is new for the address: neither its own remembered device nor the same answer."""
        if state is None:
            return True
        if not state.responsive:
            return not (state.recall and self.policy._same_device(state, obs, digests))
        return self.policy._changed(state, obs, digests)


def run(scenario: str, rule: str, ips: int, weeks: float, seed: int, sets, kb) -> tuple[list, list, float]:
    """The adaptive runs of ``scenario`` with ``rule`` (``weeks``, then 2 weeks); their window metrics
    and, window by window, the directory's counts."""
    import scanflow.simulate as simulate

    made: list[Counter] = []   # one per simulated run, in the order evaluate_seed runs them

    def make(policy, **kw):
        directory = MoveDirectory(policy.params.memory_for)
        made.append(directory.stats)
        return MovingLifecycle(policy, directory, rule, **kw)

    original = simulate.Lifecycle
    simulate.Lifecycle = make
    try:
        result, secs = adaptive_run(scenario, ips, weeks, seed, sets, kb)
    finally:
        simulate.Lifecycle = original
    # evaluate_seed runs the whole period first, then the 2-week window if it is shorter
    by_weeks = dict(zip([weeks, 2.0], made))
    return result.windows, [by_weeks.get(w.weeks, Counter()) for w in result.windows], secs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ips", type=int, default=100_000)
    ap.add_argument("--weeks", type=float, default=8.0)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--scenarios", default="paper,sporadic-heavy,churn-heavy,mobile,flat")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--plot", default="out/explore_moves.png", help="traffic against PDR, one point per run")
    args = ap.parse_args(argv)
    rules = args.rules.split(",")
    if any(r not in RULES for r in rules):
        ap.error(f"--rules: choose among {', '.join(RULES)}")
    from scanflow.knowledge import load_knowledge

    names = scenario_names(ap, args.scenarios)
    kb = load_knowledge()
    rows = []
    print("scenario | rule | seed | window | traffic | PDR | DDR | kept | ambiguous | no banner | s", flush=True)
    for name in names:
        sets = scenario_sets(name, args.ips, kb)
        for rule in rules:
            for seed in range(1, args.seeds + 1):
                windows, counts, secs = run(name, rule, args.ips, args.weeks, seed, sets, kb)
                for w, stats in zip(windows, counts):
                    rows.append((name, rule, seed, w.weeks, w.traffic_ratio, w.pdr, w.ddr))
                    print(f"{name} | {rule} | {seed} | {w.weeks:g}w | {100 * w.traffic_ratio:.2f} % | "
                          f"{100 * w.pdr:.1f} % | {100 * w.ddr:.1f} % | {stats['kept']:,} | {stats['ambiguous']:,} | "
                          f"{stats['no banner']:,} | {secs:.0f}", flush=True)
    if args.plot:
        _plot(rows, Path(args.plot), args.weeks)
        print(f"wrote {args.plot}")
    return 0


def _plot(rows, path: Path, weeks: float) -> None:
    marks = {"off": "o", "unique": "s", "any": "^"}
    with figure(path, weeks, "PDR, %", "Keeping a moved device's state (off / unique / any match)") as ax:
        for i, name in enumerate(dict.fromkeys(r[0] for r in rows)):
            for rule in marks:
                pts = [(100 * r[4], 100 * r[5]) for r in rows
                       if r[0] == name and r[1] == rule and abs(r[3] - weeks) < 1e-9]
                if pts:
                    ax.scatter(*zip(*pts), marker=marks[rule], color=f"C{i}", label=f"{name}, {rule}")
        ax.legend(fontsize=7, ncol=2)


if __name__ == "__main__":
    sys.exit(main())
