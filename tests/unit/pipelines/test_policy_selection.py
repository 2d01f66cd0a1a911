"""Which efficient policy the live system runs: ``adaptive`` by default, ``paper`` on request
(``[policy] name`` or ``scanflow run --policy``), the paper's exactly as before."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from pipelines.policy_setup import build_policy, provisional_port_sets
from pipelines.settings import PipelineSettings
from scanflow.adaptive import AdaptivePolicy
from scanflow.config import ConfigError, Settings, load_settings
from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.policy import EfficientPolicy, Observation, PolicyParams

HIK = {80: b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"}


def test_the_default_is_the_adaptive_policy_and_paper_is_the_papers_method():
    adaptive = build_policy(Settings(), PipelineSettings())
    assert isinstance(adaptive, AdaptivePolicy) and adaptive.variant == "adaptive" and adaptive.name == "EFFICIENT"
    paper = build_policy(load_settings(overrides={"policy.name": "paper"}, environ={}), PipelineSettings())
    assert isinstance(paper, EfficientPolicy) and paper.name == "EFFICIENT"
    assert isinstance(build_policy(Settings(), PipelineSettings(), name="paper"), EfficientPolicy)


def test_the_paper_policy_decides_as_before():
    """The same decisions as the paper's policy built by hand on the provisional sets (as the
    scheduler built it before the adaptive policy existed)."""
    kb = load_knowledge()
    before = EfficientPolicy(provisional_port_sets(kb), Estimator(kb), PolicyParams())
    now = build_policy(Settings(), PipelineSettings(), name="paper")
    assert (now.port_sets.standard, now.port_sets.silent, now.port_sets.unknown) == (
        before.port_sets.standard, before.port_sets.silent, before.port_sets.unknown)
    assert now.params == before.params
    rounds = [Observation.of([80, 554], HIK, probed=before.initial_ports), Observation.of([80, 554], HIK),
              Observation.of([80, 554, 8000], HIK), Observation.of([]), Observation.of([22])]
    a = b = None
    for k, obs in enumerate(rounds):
        a, plan_a = before.decide(a, obs, 1000.0 + k * 43200.0)
        b, plan_b = now.decide(b, obs, 1000.0 + k * 43200.0)
        assert (a, plan_a) == (b, plan_b)


def test_the_adaptive_policy_follows_a_new_light_answer_up_minutes_later():
    policy = build_policy(Settings(), PipelineSettings())
    state, plan = policy.decide(None, Observation.of([80, 554], HIK, probed=policy.port_sets.light), 1000.0)
    assert plan.at == 1000.0 + 300.0 and plan.ports == policy.port_sets.followup
    assert policy.ports_for(state) == policy.port_sets.followup


def test_adaptive_settings_reach_the_policy():
    s = load_settings(overrides={"policy.cadence_h": "6", "policy.followup_delay_s": "120",
                                 "policy.light_ports": "5"}, environ={})
    policy = build_policy(s, PipelineSettings())
    assert policy.params.cadence == 6 * 3600 and policy.params.followup_delay == 120
    assert len(policy.port_sets.light) == 5 and policy.sweep_interval("10.0.0.1") == 6 * 3600


def test_derived_sets_without_their_ranking_stop_the_adaptive_policy_naming_the_fix(tmp_path):
    kb = load_knowledge()
    sets = provisional_port_sets(kb)
    paths = {f"{role}_set": str(getattr(sets, role).write(tmp_path / f"{role}.json"))
             for role in ("standard", "silent", "unknown")}
    pipeline = PipelineSettings(**paths)
    with pytest.raises(ConfigError, match=r"pipeline.ranking_file: .*scanflow portsets derive.*--policy paper"):
        build_policy(Settings(), pipeline)
    assert isinstance(build_policy(Settings(), pipeline, name="paper"), EfficientPolicy)


def test_run_policy_flag_reaches_every_child(monkeypatch, tmp_path):
    """``scanflow run --policy paper``: the loop's settings and the --set handed to every child
    process name the paper's policy; without the flag the configuration's (adaptive) stands."""
    import scanflow.loop.orchestrate as orchestrate
    from scanflow.cli import main

    seen = {}

    class _Loop:
        def __init__(self, spec, settings, echo):
            seen["spec"], seen["settings"] = spec, settings

        def run(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(orchestrate, "Loop", _Loop)
    monkeypatch.setattr("connectors.kafka_admin.require_topics", lambda *a, **k: None)
    for flag, name in ((["--policy", "paper"], "paper"), ([], "adaptive")):
        CliRunner().invoke(main, ["run", *flag, "--skip-kafka-up", "--run-dir", str(tmp_path / name)], env={})
        assert seen["settings"].policy.name == name
        assert (f"policy.name={name}" in seen["spec"].set_items) == bool(flag)
        child = load_settings(overrides=dict(i.split("=", 1) for i in seen["spec"].set_items), environ={})
        assert isinstance(build_policy(child, PipelineSettings()), EfficientPolicy if flag else AdaptivePolicy)
    bad = CliRunner().invoke(main, ["run", "--policy", "fast"], env={})
    assert bad.exit_code == 2 and "'fast' is not one of 'adaptive', 'paper'" in bad.output


def test_scaled_loop_policy_compresses_the_adaptive_durations():
    from scanflow.loop.scheduler import scaled_policy

    p = scaled_policy(Settings().policy, 0.01)
    assert (p.cadence_h, p.followup_delay_s, p.memory_for_h, p.exploited_cap_h) == pytest.approx((0.12, 3.0, 7.2, 0.72))
    policy = build_policy(dataclasses.replace(Settings(), policy=p), PipelineSettings())
    assert policy.params.exploited_cap == pytest.approx(0.72 * 3600)
    assert policy.exploited == load_knowledge().exploited_models() and policy.exploited
    assert dataclasses.replace(p, name="paper").name == "paper"
