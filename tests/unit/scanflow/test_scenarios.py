"""Named worlds (``scanflow evaluate --scenario``) and judging windows from runs of their own length."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from scanflow.cli import main
from scanflow.evaluation import EvaluationConfig, derive_policy_sets, evaluate_seed, new_device_delays
from scanflow.policy import PolicyPortSets
from scanflow.scenarios import DEFAULT_SCENARIO, SCENARIOS, scenario
from scanflow.world import WorldConfig


def test_every_scenario_is_a_valid_world_that_differs_from_the_paper_in_what_it_names():
    assert DEFAULT_SCENARIO == "paper" and {"paper", "sporadic-heavy", "churn-heavy", "mobile", "flat"} <= set(SCENARIOS)
    base = WorldConfig().as_dict()
    for name, sc in SCENARIOS.items():
        cfg = sc.config()
        changed = {k for k, v in cfg.as_dict().items() if base[k] != v}
        assert changed == {k for k, v in sc.world.items() if base[k] != v}, name
    assert SCENARIOS["paper"].config() == WorldConfig()
    assert scenario("sporadic-heavy").config().sporadic_share == 0.125


def test_world_overrides_apply_after_the_scenario():
    cfg = scenario("sporadic-heavy").config(overrides={"sporadic_share": "0.05"})
    assert cfg.sporadic_share == 0.05 and cfg.dynamic_share == 0.125


def test_an_unknown_scenario_is_one_line_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="known: paper"):
        scenario("nope")
    result = CliRunner().invoke(main, ["evaluate", "--scenario", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown scenario 'nope'" in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def small():
    cfg = EvaluationConfig(ips=2000, weeks=4, windows=(2.0, 4.0), seeds=(1,), survey_ips=200_000, record=False)
    derivation, _ = derive_policy_sets(cfg)
    return cfg, PolicyPortSets(derivation.standard, derivation.silent, derivation.unknown)


def test_a_shorter_window_is_judged_on_a_run_of_its_own_length(small):
    cfg, sets = small
    both = evaluate_seed(cfg, 1, sets)
    alone = evaluate_seed(dataclasses.replace(cfg, weeks=2.0, windows=(2.0,)), 1, sets)
    assert [w.weeks for w in both.windows] == [2.0, 4.0]
    assert both.windows[0] == alone.windows[0]          # the 2-week figures of a 2-week run
    assert both.world.horizon == 4 * 7 * 86400


def test_new_device_delays_count_devices_that_appear_after_the_start(small):
    cfg, sets = small
    r = evaluate_seed(cfg, 1, sets)
    d = new_device_delays(r.world, r.standard, r.efficient)
    assert d == r.new_devices and d["devices"] > 0
    for side in ("standard", "efficient"):
        assert 0 < d[side]["seen"] <= 1 and 0 <= d[side]["median_h"] <= d[side]["p90_h"]
    # the standard scan probes every address every 12 h: it sees a new device within a round or two
    assert d["standard"]["median_h"] <= 24


def test_all_scenarios_write_one_table_and_one_plot(tmp_path):
    args = ["evaluate", "--scenario", "all", "--ips", "1500", "--weeks", "2", "--seeds", "1", "--windows", "1",
            "--survey-ips", "150000", "--no-parquet", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "scenarios.json").read_text())
    # the cross-scenario table is the paper's method's (the first policy); both policies are in compare.json
    assert {(r["scenario"], r["variant"], r["window"]) for r in table["rows"]} == {
        (s, "paper", w) for s in SCENARIOS for w in ("1w", "2w")}
    compare = json.loads((tmp_path / "compare.json").read_text())
    assert [(r["scenario"], r["variant"], r["window"]) for r in compare["rows"]] == [
        (s, p, w) for s in SCENARIOS for p in ("paper", "adaptive") for w in ("1w", "2w")]
    for name in SCENARIOS:
        for policy in ("paper", "adaptive"):
            m = json.loads((tmp_path / name / policy / "metrics.json").read_text())
            assert (m["config"]["scenario"], m["config"]["efficient_policy"]) == (name, policy)
        m = json.loads((tmp_path / name / "paper" / "metrics.json").read_text())
        assert m["config"]["scenario"] == name
        want = json.loads(json.dumps(SCENARIOS[name].config().replace(n_ips=1500).as_dict()))
        assert m["config"]["world"] == want          # the scenario and every parameter, recorded
    assert "The paper's method across scenarios" in result.output and "table 4, run 3" in result.output
    assert (tmp_path / "scenarios.md").read_text().count("\n") == len(table["rows"]) + 2 + 3
    pytest.importorskip("matplotlib")
    assert (tmp_path / "scenarios.png").stat().st_size > 10_000
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_scenarios_with_one_policy_keep_one_directory_per_scenario(tmp_path):
    args = ["evaluate", "--scenario", "all", "--policy", "paper", "--ips", "1500", "--weeks", "1", "--seeds", "1",
            "--windows", "1", "--survey-ips", "150000", "--no-parquet", "--no-plots", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for name in SCENARIOS:
        assert json.loads((tmp_path / name / "metrics.json").read_text())["config"]["variant"] == "paper"
    assert (tmp_path / "scenarios.json").exists() and not (tmp_path / "compare.json").exists()
