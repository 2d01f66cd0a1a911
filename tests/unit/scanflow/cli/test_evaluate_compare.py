"""``scanflow evaluate`` comparing policies (the default ``--policy both``) and the adaptive policy's
ablation: one table with every variant, each variant's own directory, and the Pareto plot."""

from __future__ import annotations

from dataclasses import replace

import json

import pytest
from click.testing import CliRunner

from scanflow.adaptive import AdaptiveParams
from scanflow.cli import main
from scanflow.evaluation import ABLATIONS, EvaluationConfig, policy_variants

VARIANTS = ["paper", "adaptive", "adaptive-no-followup", "adaptive-no-cadence", "adaptive-no-memory",
            "adaptive-light-first", "adaptive-moves"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    args = ["evaluate", "--ablation", "--ips", "3000", "--weeks", "2", "--seeds", "1", "--windows", "1",
            "--survey-ips", "300000", "--no-parquet", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_variants_of_both_policies_and_of_the_ablation():
    assert [v.name for v in policy_variants()] == ["paper", "adaptive"]
    assert [v.name for v in policy_variants("paper")] == ["paper"]
    assert [v.name for v in policy_variants("adaptive")] == ["adaptive"]
    assert [v.name for v in policy_variants("both", ablation=True)] == VARIANTS
    # the ablation brings in the full adaptive policy as its reference
    assert [v.name for v in policy_variants("paper", ablation=True)] == VARIANTS
    by = {v.name: v for v in policy_variants("both", ablation=True)}
    base = AdaptiveParams()
    assert by["paper"].adaptive is None and by["adaptive"].adaptive == base
    for name, change, _ in ABLATIONS:
        p = by[name].adaptive
        assert all(getattr(p, k) == v != getattr(base, k) for k, v in change.items()), name
        # one mechanism off, everything else as the reference
        rest = {k for k in ("followup", "learned_cadence", "memory", "initial_scan") if k not in change}
        assert all(getattr(p, k) == getattr(base, k) for k in rest), name
    # devices that move, off by default, are switched on (and off where the reference has them)
    assert by["adaptive-moves"].adaptive == replace(base, moves=True)
    moving = {v.name: v for v in policy_variants("adaptive", ablation=True, base=replace(base, moves=True))}
    assert moving["adaptive-no-moves"].adaptive == base and "adaptive-moves" not in moving
    cfg = by["adaptive-no-memory"].apply(EvaluationConfig())
    assert (cfg.policy, cfg.label, cfg.adaptive.memory) == ("adaptive", "adaptive-no-memory", False)
    assert EvaluationConfig().label == "paper"
    with pytest.raises(ValueError, match="known: adaptive, paper, both"):
        policy_variants("nope")


def test_the_comparison_has_every_variant_and_window(run):
    out, output = run
    table = json.loads((out / "compare.json").read_text())
    assert [(r["variant"], r["window"]) for r in table["rows"]] == [(v, w) for v in VARIANTS for w in ("1w", "2w")]
    for r in table["rows"]:
        assert r["scenario"] == "paper"
        assert r["policy"] == ("paper" if r["variant"] == "paper" else "adaptive")
        assert 0 < r["traffic_ratio"] < 1 and 0 < r["pdr"] <= 1 and 0 < r["ddr"] <= 1
        # the ethics bound: never more probes per address and slot than the standard set has ports
        assert 0 < r["max_slot_probes"] <= r["standard_set"] and r["within_ethics_bound"]
        assert r["new_median_h"] is not None and r["new_median_h"] >= 0
    assert {r["variant"] for r in table["rows"] if "meets_adaptive_target" in r} == set(VARIANTS)
    assert "Efficient policies against the standard scan" in output
    for name in VARIANTS:
        assert f"paper     {name}" in output, name


def test_each_variant_writes_its_own_metrics_with_what_it_ran(run):
    out, _ = run
    for name in VARIANTS:
        cfg = json.loads((out / name / "metrics.json").read_text())["config"]
        assert cfg["variant"] == name
        assert cfg["efficient_policy"] == ("paper" if name == "paper" else "adaptive")
    adaptive = lambda name: json.loads((out / name / "metrics.json").read_text())["config"]["adaptive"]
    assert adaptive("adaptive")["followup"] and not adaptive("adaptive-no-followup")["followup"]
    assert not adaptive("adaptive-no-cadence")["learned_cadence"] and not adaptive("adaptive-no-memory")["memory"]
    assert adaptive("adaptive-light-first")["initial_scan"] == "light"
    assert json.loads((out / "paper" / "metrics.json").read_text())["config"]["adaptive"] is None


def test_the_markdown_table_has_a_row_per_variant_and_window_and_no_inf_or_nan(run):
    out, _ = run
    md = (out / "compare.md").read_text()
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(VARIANTS) * 2 + 3        # heading, rule, rows, the paper's Table 4
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    lowered = md.lower()
    assert "nan" not in lowered and "inf" not in lowered
    assert "| paper, Table 4 | run 3 | 8w | 3.95 % | 94.3 % |" in md


def test_the_pareto_plot_is_a_png(run):
    pytest.importorskip("matplotlib")
    out, _ = run
    data = (out / "pareto.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_one_policy_writes_straight_into_out_without_a_comparison(tmp_path):
    args = ["evaluate", "--policy", "adaptive", "--ips", "3000", "--weeks", "1", "--seeds", "1", "--windows", "1",
            "--survey-ips", "300000", "--no-parquet", "--no-plots", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["efficient_policy"] == "adaptive" and m["config"]["adaptive"]["followup"]
    assert "Efficient (adaptive) vs standard scan" in result.output and "adaptive policy: first probe" in result.output
    assert not (tmp_path / "compare.json").exists()


def test_the_papers_method_in_a_comparison_is_the_papers_method_alone(tmp_path, run):
    args = ["evaluate", "--policy", "paper", "--ips", "3000", "--weeks", "2", "--seeds", "1", "--windows", "1",
            "--survey-ips", "300000", "--no-parquet", "--no-plots", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    alone = json.loads((tmp_path / "metrics.json").read_text())
    compared = json.loads((run[0] / "paper" / "metrics.json").read_text())
    assert alone["windows"] == compared["windows"] and alone["new_devices"] == compared["new_devices"]


def test_the_ceiling_is_the_standard_scan_again_at_the_efficient_instants(tmp_path):
    out = tmp_path / "ceiling"
    args = ["evaluate", "--policy", "adaptive", "--ceiling", "--ips", "3000", "--weeks", "1", "--seeds", "1",
            "--windows", "1", "--survey-ips", "300000", "--no-parquet", "--no-plots", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert set(rows) == {"adaptive", "standard-twin"}
    twin = rows["standard-twin"]
    # synchronised and without loss the twin is the standard scan itself
    assert twin["traffic_ratio"] == pytest.approx(1.0) and twin["pdr"] == 1.0 and twin["ddr"] == 1.0
    desync = tmp_path / "desync"
    result = CliRunner().invoke(main, args[:-1] + [str(desync), "--desync", "--loss", "0.01"])
    assert result.exit_code == 0, result.output
    twin = {r["variant"]: r for r in json.loads((desync / "compare.json").read_text())["rows"]}["standard-twin"]
    assert twin["pdr"] < 1.0      # other instants and losses: another sample of short-lived devices
