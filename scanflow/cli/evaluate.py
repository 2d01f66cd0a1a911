"""``scanflow evaluate``: the standard and the efficient scan on the same synthetic internet."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import click

from scanflow.cli import CliContext, pass_ctx
from scanflow.metrics import HONEYPOT_MIN_PORTS


def _weeks_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give weeks separated by commas, e.g. 2,8") from None
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter("windows must be positive numbers of weeks")
    return values


@click.command("evaluate")
@click.option("--ips", type=click.IntRange(100, 50_000_000), default=100_000, show_default=True,
              help="Addresses in the synthetic world.")
@click.option("--weeks", type=click.FloatRange(0.5, 52), default=8.0, show_default=True,
              help="Simulated period.")
@click.option("--seeds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Number of worlds (seeds 1..N), each a different sample of addresses.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/evaluate", show_default=True,
              help="Directory for metrics.json, Parquet and plots.")
@click.option("--windows", default="2", show_default=True,
              help="Extra judging periods in weeks (comma separated); the full --weeks is always one.")
@click.option("--loss", type=click.FloatRange(0, 0.9), default=0.0, show_default=True,
              help="Probability that one probe of one port is lost (the paper's congestion).")
@click.option("--desync", is_flag=True,
              help="Let the two scans probe each IP at different instants of the 12 h round (the paper's set-up).")
@click.option("--scenario", default="paper", show_default=True, metavar="NAME",
              help="The named world (docs/EVALUATION.md): paper, sporadic-heavy, churn-heavy, mobile, flat; "
                   "'all' runs each (one per core) into its own directory under --out and writes the "
                   "cross-scenario table and plot.")
@click.option("--world", "world_items", multiple=True, metavar="KEY=VALUE",
              help="Override a world parameter (docs/WORLD.md) after the scenario's, e.g. --world "
                   "sporadic_share=0.05 (repeatable).")
@click.option("--survey-seed", type=int, default=0, show_default=True,
              help="Seed of the full-port survey the port sets are derived from.")
@click.option("--survey-ips", type=click.IntRange(10_000, 200_000_000), default=None,
              help="Addresses in the survey (default: the paper's ~12.2 M, of which 2.7 % answer).")
@click.option("--initial-scan", type=click.Choice(["standard", "silent"]), default=None,
              help="Port set of each IP's first scan, for both policies: standard (the paper's classification "
                   "scan) or silent (the paper's silent sweep set). Default: policy.initial_scan of the "
                   "configuration (auto: each policy's own, standard for the paper's method, silent for the "
                   "adaptive policy).")
@click.option("--honeypot-min-ports", type=click.IntRange(min=0), default=HONEYPOT_MIN_PORTS, show_default=True,
              help="Leave IPs the standard scan found with this many open ports or more out of PDR and DDR "
                   "(honeypots; 0 = keep every IP). PDR*/DDR* always keep them.")
@click.option("--policy", "policy", type=click.Choice(["paper", "adaptive", "both"]), default="both", show_default=True,
              help="The efficient policy judged against the standard scan: the paper's method, the adaptive "
                   "policy (scanflow.adaptive), or both side by side (each into its own directory under --out, "
                   "plus compare.json, compare.md and pareto.png).")
@click.option("--ablation", is_flag=True,
              help="Also run the adaptive policy with each mechanism switched off in turn (follow-up, learned "
                   "cadence, memory, the silent-set first probe), into the same comparison.")
@click.option("--ceiling", is_flag=True,
              help="Also run the standard scan again at the efficient scan's own instants (with --desync and "
                   "--loss: what any policy probing there could at most find), into the same comparison.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--no-parquet", is_flag=True, help="Skip the Parquet observations (faster, smaller).")
@pass_ctx
def evaluate(obj: CliContext, ips: int, weeks: float, seeds: int, out_dir: str, windows: str, loss: float, desync: bool,
             scenario: str, world_items: tuple[str, ...], survey_seed: int, survey_ips: int | None,
             initial_scan: str | None, honeypot_min_ports: int, policy: str, ablation: bool, ceiling: bool,
             no_plots: bool,
             no_parquet: bool) -> None:
    """Run the standard and the efficient policies on the same synthetic internet and timeline.

    Derives the port sets from an emulated full-port survey (as the paper did), then for each seed
    generates a world and runs both policies, and prints a Table-4-style table (per seed, mean, min)
    for 2 weeks and the full period, each from a run of its own length. Writes metrics.json, observations/found/events Parquet and the
    Figure 3, 5, 6, 7 analogs, detection delays and traffic over time as PNG into --out. The policy
    parameters and knowledge-base files come from the [policy] configuration, for both policies as the
    live pipeline reads them; --initial-scan (or --set policy.initial_scan=...) chooses the first scan.
    With --policy both (the default) or --ablation, each policy variant is written into its own
    directory and one table compares them (compare.json, compare.md, printed) beside a Pareto plot of
    traffic against PDR (pareto.png) with the paper's Table 4 marked.
    """
    from scanflow import evaluate_report as report
    from scanflow.evaluation import EvaluationConfig, policy_variants
    from scanflow.knowledge import load_knowledge
    from scanflow.policy import params_from_settings
    from scanflow.scenarios import SCENARIOS, scenario as named

    overrides = {}
    for item in world_items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint="--world")
        overrides[key.strip()] = value.strip()
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    policy_settings = obj.settings.policy
    configs = []
    try:
        for name in names:
            cfg = EvaluationConfig(ips=ips, weeks=weeks, windows=tuple(sorted(set(_weeks_list(windows)) | {weeks})),
                                   seeds=tuple(range(1, seeds + 1)), loss=loss, desync=desync,
                                   world=named(name).config(overrides=overrides), scenario=name,
                                   survey_seed=survey_seed, survey_ips=survey_ips, record=not no_parquet,
                                   params=_policy_params(params_from_settings(policy_settings), initial_scan),
                                   min_confidence=policy_settings.min_confidence,
                                   honeypot_min_ports=honeypot_min_ports)
            cfg.world_config()
            configs.append(cfg)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _check_whole_rounds(policy_settings)
    # the adaptive policy's parameters from the same [policy] settings the live pipeline reads
    from pipelines.policy_setup import adaptive_params_from_settings

    base = _policy_params(adaptive_params_from_settings(policy_settings), initial_scan)
    variants = policy_variants(policy, ablation, base=base, ceiling=ceiling)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kb = load_knowledge(policy_settings.kb_paths(), builtin=policy_settings.builtin_kb)
    if scenario != "all":
        # one scenario at a time: its efficient runs may use every core (whole /24s per process; the
        # figures do not change; runs writing Parquet records stay in one process)
        cfg = dataclasses.replace(configs[0], workers=os.cpu_count() or 1)
        if len(variants) == 1:
            _evaluate_one(variants[0].apply(cfg), out, kb, no_plots=no_plots, no_parquet=no_parquet)
            return
        derived = _derive(cfg, kb, quiet=False)
        summaries = [_evaluate_one(v.apply(cfg), out / v.name, kb, no_plots=no_plots, no_parquet=no_parquet,
                                   derived=derived) for v in variants]
        _write_comparison(out, summaries, no_plots=no_plots)
        return
    runs = _run_all(configs, variants, out, kb, no_parquet)
    # the cross-scenario table and bar plot of the first variant (the paper's method unless left out)
    table = report.scenario_table([runs[(c.scenario, variants[0].name)] for c in configs])
    click.echo(report.format_scenario_table(table))
    written = _write_table(out, "scenarios", table, report.scenario_markdown, report.plot_scenarios,
                           "scenarios.png", no_plots=no_plots)
    if len(variants) > 1:
        written += _write_comparison(out, [runs[(c.scenario, v.name)] for c in configs for v in variants],
                                     no_plots=no_plots)
    click.echo(f"\nwrote the cross-scenario tables and plots to {out}/ ({len(written)} files; each scenario in its "
               "own directory)")


def _run_all(configs, variants, out: Path, kb, no_parquet: bool) -> dict[tuple[str, str], dict]:
    """Every scenario and variant, one process per core: first each scenario's port sets, then a job
    per (scenario, variant) into ``out/scenario`` (``out/scenario/variant`` with several variants;
    metrics.json and Parquet: the per-run plots are left out here, the cross-scenario ones compare).
    Returns the summaries by (scenario, variant)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from scanflow.scenarios import SCENARIOS

    workers = max(1, min(len(configs) * len(variants), os.cpu_count() or 1))
    total = len(configs) * len(variants)
    click.echo(f"{len(configs)} scenarios x {len(variants)} policies, {workers} at a time: "
               f"{', '.join(c.scenario for c in configs)}; {', '.join(v.name for v in variants)}", err=True)
    runs: dict[tuple[str, str], dict] = {}
    started = time.perf_counter()
    # the adaptive variants first: they take longest, the paper's method fills the gaps at the end
    order = sorted(variants, key=lambda v: v.policy == "paper")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {pool.submit(_derive, cfg, kb): ("sets", cfg) for cfg in configs}
        while jobs:
            done, _ = wait(jobs, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, what = jobs.pop(fut)
                if kind == "sets":
                    for v in order:
                        where = out / what.scenario / v.name if len(variants) > 1 else out / what.scenario
                        jobs[pool.submit(_evaluate_quietly, v.apply(what), str(where), kb, no_parquet,
                                         fut.result())] = ("run", (what.scenario, v.name))
                    continue
                runs[what] = fut.result()
                name, variant = what
                click.echo(f"[{len(runs)}/{total}] scenario {name}, policy {variant} done "
                           f"({time.perf_counter() - started:.0f} s): {SCENARIOS[name].summary}", err=True)
    return runs


def _write_comparison(out: Path, summaries: list[dict], *, no_plots: bool) -> list[Path]:
    """The variants side by side: printed, ``compare.json``, ``compare.md`` and ``pareto.png``."""
    from scanflow import compare_report as compare

    table = compare.compare_table(summaries)
    click.echo("\n" + compare.format_compare_table(table))
    written = _write_table(out, "compare", table, compare.compare_markdown, compare.plot_pareto, "pareto.png",
                           no_plots=no_plots)
    click.echo(f"\nwrote the comparison to {out}/ (compare.json, compare.md"
               f"{'' if no_plots else ', pareto.png'}; each policy in its own directory)")
    return written


def _derive(cfg, kb, quiet: bool = True):
    """The port sets of ``cfg``'s world from its full-port survey: ``(derivation, survey rows, seconds)``."""
    from scanflow.evaluation import derive_policy_sets

    if not quiet:
        click.echo("deriving port sets from the full-port survey ...", err=True)
    t0 = time.perf_counter()
    derivation, survey_rows = derive_policy_sets(cfg, kb)
    return derivation, survey_rows, time.perf_counter() - t0


def _evaluate_quietly(cfg, out: str, kb, no_parquet: bool, derived=None) -> dict:
    """One scenario and policy in a worker process: no progress bar, no table, no per-run plots."""
    return _evaluate_one(cfg, Path(out), kb, no_plots=True, no_parquet=no_parquet, quiet=True, derived=derived)


def _evaluate_one(cfg, out: Path, kb, *, no_plots: bool, no_parquet: bool, quiet: bool = False,
                  derived=None) -> dict:
    """One evaluation (one world configuration and policy, every seed) into ``out``; returns its
    summary. ``derived``: the port sets already derived (:func:`_derive`), shared by the variants."""
    from scanflow import evaluate_report as report
    from scanflow.evaluation import evaluate_seed, evaluation_rounds
    from scanflow.policy import PolicyPortSets

    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    derivation, survey_rows, seconds["port_sets"] = derived or _derive(cfg, kb, quiet)
    written = [ps.write(out / f"portset_{ps.name}.json")
               for ps in (derivation.standard, derivation.silent, derivation.unknown)]
    port_sets = PolicyPortSets.of(derivation)

    results = []
    t0 = time.perf_counter()
    if quiet:
        results = [evaluate_seed(cfg, seed, port_sets, kb) for seed in cfg.seeds]
    else:
        with click.progressbar(length=evaluation_rounds(cfg) * len(cfg.seeds), label=f"simulating {cfg.label}",
                               file=sys.stderr, show_eta=True, item_show_func=lambda _: None) as bar:
            for seed in cfg.seeds:
                results.append(evaluate_seed(cfg, seed, port_sets, kb, progress=bar.update))
    seconds["simulation"] = time.perf_counter() - t0
    seconds["per_seed"] = {str(r.seed): r.seconds for r in results}

    summary = report.build_summary(cfg, derivation, results, survey_rows=survey_rows, seconds=seconds)
    if not quiet:
        click.echo(report.format_table(summary))
    written.append(report.write_json(out / "metrics.json", summary))
    if not no_parquet:
        written += report.write_parquet(out, results)
    if not no_plots:
        try:
            written += report.write_plots(out, derivation, results, kb.device_ports() | kb.malware_ports())
        except report.PlotsUnavailable as exc:
            click.echo(f"scanflow: warning: {exc}", err=True)
    if not quiet:
        click.echo(f"\nwrote {len(written)} files to {out}/ (simulation {seconds['simulation']:.1f} s, "
                   f"port sets {seconds['port_sets']:.1f} s)")
    return summary


def _check_whole_rounds(policy_settings) -> None:
    """The simulator probes in rounds of ``policy.standard_interval_h``: the sweep periods must be whole
    numbers of them (a one-line usage error naming the setting otherwise)."""
    slot = policy_settings.standard_interval_h
    for name in ("cadence_h", "silent_interval_h"):
        hours = getattr(policy_settings, name)
        rounds = hours / slot
        if rounds < 1 - 1e-9 or abs(rounds - round(rounds)) > 1e-9:
            raise click.UsageError(f"policy.{name} = {hours:g}: the simulator probes in rounds of "
                                   f"policy.standard_interval_h ({slot:g} h); give a whole multiple of it, "
                                   f"e.g. {max(1, round(rounds)) * slot:g}")


def _policy_params(params, initial_scan: str | None):
    """The configured parameters of either policy, with ``--initial-scan`` if given."""
    return params if initial_scan is None else dataclasses.replace(params, initial_scan=initial_scan)


COMMANDS = [evaluate]


def _write_table(out: Path, stem: str, table, markdown, plot, plot_name: str, *, no_plots: bool) -> list[Path]:
    """``<stem>.json`` and ``<stem>.md`` of a table, and its plot unless ``no_plots`` (a missing
    plotting library is a warning, not an error). Returns the files written."""
    from scanflow import evaluate_report as report

    written = [report.write_json(out / f"{stem}.json", table)]
    (out / f"{stem}.md").write_text(markdown(table) + "\n")
    written.append(out / f"{stem}.md")
    if not no_plots:
        try:
            written.append(plot(out / plot_name, table))
        except report.PlotsUnavailable as exc:
            click.echo(f"scanflow: warning: {exc}", err=True)
    return written
