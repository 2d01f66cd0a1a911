"""``scanflow evaluate --policy paper`` end to end on a small world: table, JSON, Parquet and plots (one
policy writes straight into --out; the comparison of several is ``test_evaluate_compare.py``)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scanflow.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate")
    args = ["evaluate", "--policy", "paper", "--ips", "3000", "--weeks", "2", "--seeds", "2", "--windows", "1",
            "--survey-ips", "300000", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_prints_a_table_per_seed_with_mean_min_and_the_papers_rows(run):
    _, output = run
    for text in ("period", "1w     1", "1w     2", "2w     mean", "2w     min", "paper, real network", "8.94 %",
                 "first scan of each IP with the standard set"):
        assert text in output, text


def test_writes_metrics_json_with_every_seed_and_window(run):
    out, _ = run
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["windows"]) == {"1w", "2w"}
    rows = data["windows"]["2w"]["per_seed"]
    assert [r["seed"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 < r["traffic_ratio"] < 1 and 0 < r["pdr"] <= 1 and 0 < r["ddr"] <= 1
    assert data["port_sets"]["standard"] > data["port_sets"]["unknown"] > data["port_sets"]["silent"] > 0


def test_writes_observations_found_and_events_as_parquet(run):
    out, _ = run
    obs = pq.read_table(out / "observations.parquet")
    assert set(obs.column("policy").to_pylist()) == {"STANDARD", "EFFICIENT"}
    assert obs.schema.field("open_ports").type.value_type.bit_width == 32
    found = pq.read_table(out / "found.parquet")
    assert set(found.column("seed").to_pylist()) == {1, 2}
    assert pq.read_table(out / "events.parquet").num_rows > 0


def test_writes_the_plots(run):
    pytest.importorskip("matplotlib")
    out, _ = run
    for name in ("fig3_port_detection_vs_ports", "fig5_device_detection_vs_ports", "fig6_backoff", "fig7_attempts",
                 "detection_delay", "traffic_ratio_over_time"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name


def test_bad_world_parameter_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--world", "nope=1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown world parameter" in result.output


@pytest.mark.parametrize("how", [["--set", "policy.initial_scan=silent", "evaluate"], ["evaluate", "--initial-scan", "silent"]])
def test_the_silent_first_scan_variant_is_selectable(tmp_path, how, run):
    args = how + ["--policy", "paper", "--ips", "3000", "--weeks", "2", "--seeds", "1", "--windows", "1", "--survey-ips", "300000",
                  "--no-plots", "--no-parquet", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "first scan of each IP a silent sweep" in result.output
    silent = json.loads((tmp_path / "metrics.json").read_text())
    default = json.loads((run[0] / "metrics.json").read_text())
    assert silent["config"]["policy"]["initial_scan"] == "silent"
    assert default["config"]["policy"]["initial_scan"] == "standard"
    # a silent first scan costs less in the first week than a standard-set classification round
    s1 = silent["windows"]["1w"]["per_seed"][0]
    d1 = default["windows"]["1w"]["per_seed"][0]
    assert s1["efficient_bytes"] < d1["efficient_bytes"]
    assert s1["standard_bytes"] == d1["standard_bytes"]


def test_the_honeypot_exclusion_is_an_option_and_metrics_json_says_which(tmp_path, run):
    args = ["evaluate", "--policy", "paper", "--ips", "3000", "--weeks", "2", "--seeds", "2", "--windows", "1",
            "--survey-ips", "300000", "--no-plots", "--no-parquet", "--honeypot-min-ports", "0", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "PDR/DDR count every IP (--honeypot-min-ports 0)" in result.output
    kept = json.loads((tmp_path / "metrics.json").read_text())
    default = json.loads((run[0] / "metrics.json").read_text())
    assert (kept["config"]["honeypot_min_ports"], default["config"]["honeypot_min_ports"]) == (0, 100)
    assert "IPs with >= 100 open ports (honeypots), which PDR/DDR leave out" in run[1]
    for window in ("1w", "2w"):
        for k, d in zip(kept["windows"][window]["per_seed"], default["windows"][window]["per_seed"]):
            assert (k["honeypot_min_ports"], k["excluded_ips"], d["honeypot_min_ports"]) == (0, 0, 100)
            # without the exclusion PDR and DDR are the PDR* and DDR* of the default; nothing else moves
            assert (k["pdr"], k["ddr"]) == (d["pdr_all"], d["ddr_all"]) == (k["pdr_all"], k["ddr_all"])
            assert (k["traffic_ratio"], k["attempts_ratio"]) == (d["traffic_ratio"], d["attempts_ratio"])


@pytest.mark.parametrize("how, light_target, initial", [
    (["--set", "policy.light_target=0.95", "--set", "policy.initial_scan=standard", "evaluate"], 0.95, "standard"),
    (["--set", "policy.cadence_h=24", "evaluate", "--initial-scan", "standard"], 0.93, "standard"),
])
def test_the_adaptive_policy_is_evaluated_with_the_configured_parameters(tmp_path, how, light_target, initial):
    # the [policy] settings the live pipeline reads reach evaluate's adaptive runs too, and
    # --initial-scan sets the first scan of both policies
    args = how + ["--policy", "adaptive", "--ips", "3000", "--weeks", "1", "--seeds", "1", "--windows", "1",
                  "--survey-ips", "300000", "--no-plots", "--no-parquet", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    adaptive = json.loads((tmp_path / "metrics.json").read_text())["config"]["adaptive"]
    assert adaptive["light_target"] == light_target and adaptive["initial_scan"] == initial
    assert adaptive["cadence"] == (24 if "policy.cadence_h=24" in how else 12) * 3600


def test_a_sweep_period_that_is_not_whole_rounds_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["--set", "policy.cadence_h=6", "evaluate", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "policy.cadence_h = 6: the simulator probes in rounds of policy.standard_interval_h (12 h)" in result.output
    assert "e.g. 12" in result.output


def test_devices_that_move_are_evaluated_from_the_config_and_their_count_reported(tmp_path):
    # policy.moves reaches evaluate's adaptive runs; the answers that resumed a moved device are counted
    args = ["--set", "policy.moves=true", "evaluate", "--scenario", "mobile", "--policy", "adaptive", "--ips", "5000",
            "--weeks", "8", "--seeds", "1", "--windows", "8", "--desync", "--survey-ips", "300000", "--no-plots",
            "--no-parquet", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["adaptive"]["moves"] is True
    moved = metrics["efficient_moved"]["1"]
    assert moved > 0 and f"devices that move on: {moved:,} answers resumed" in result.output
