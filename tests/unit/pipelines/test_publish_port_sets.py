"""The scheduler publishes its named port sets where agents resolve the names its commands carry."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.policy_setup import build_policy, publish_port_sets, published_dir
from pipelines.settings import PipelineSettings
from scanflow.config import InfraSettings, Settings
from scanflow.portsets import PortSet


def test_named_sets_are_published_once_and_never_changed(tmp_path):
    settings = dataclasses.replace(Settings(), infra=InfraSettings(state_dir=str(tmp_path / "state")))
    policy = build_policy(settings, PipelineSettings(), name="paper")
    where = published_dir(settings)
    paths = publish_port_sets(policy, where)
    sets = policy.port_sets
    assert sorted(p.name for p in paths) == sorted(f"{ps.name}-v{ps.version}.json"
                                                   for ps in (sets.standard, sets.silent, sets.unknown))
    assert PortSet.read(where / f"{sets.silent.name}-v{sets.silent.version}.json").ports == sets.silent.ports
    # A restart publishes the same files again: nothing changes.
    assert publish_port_sets(policy, where) == paths
    # Another set under a published name and version is refused, naming the fix.
    clash = where / f"{sets.silent.name}-v{sets.silent.version}.json"
    PortSet.named(sets.silent.name, sets.silent.version, [1, 2, 3]).write(clash)
    with pytest.raises(ValueError, match="new version"):
        publish_port_sets(policy, where)


def test_every_set_of_the_adaptive_policy_is_published_and_resolved_by_an_agent(tmp_path):
    """The adaptive policy's commands name light, followup, unknown-light, the first-probe set and one
    light+<model> set per model: each is published, and the agent's catalog resolves each by name."""
    from probe_agent.job import PortSetCatalog

    settings = dataclasses.replace(Settings(), infra=InfraSettings(state_dir=str(tmp_path / "state")))
    policy = build_policy(settings, PipelineSettings())
    assert policy.variant == "adaptive"
    paths = publish_port_sets(policy, published_dir(settings))
    named = policy.published()
    assert {"light", "followup", "unknown-light"} <= {ps.name for ps in named}
    assert sum(ps.name.startswith("light+") for ps in named) == len({ps.ref for ps in policy.estimator.port_sets()})
    assert len(paths) == len({ps.ref for ps in named})
    catalog = PortSetCatalog(published_dir(settings))
    for ps in (*named, policy.initial_ports, policy.port_sets.silent):
        assert catalog.resolve(ps.to_record()) == ps.sorted, ps.ref


def test_several_jobs_publishing_into_one_directory_at_once_all_succeed(tmp_path):
    """The jobs of ``scanflow run --scheduler-jobs N`` start together and publish the same sets into
    the run's directory at the same moment (a shared temporary name made one job's rename fail: a
    clean-clone run saw it). Threads stand in for the jobs here; each round starts them on a barrier."""
    import threading

    settings = dataclasses.replace(Settings(), infra=InfraSettings(state_dir=str(tmp_path / "state")))
    policy = build_policy(settings, PipelineSettings())
    for round_ in range(5):
        where = tmp_path / f"round-{round_}"
        barrier, errors, results = threading.Barrier(4), [], []

        def publish():
            barrier.wait()
            try:
                results.append(publish_port_sets(policy, where))
            except Exception as exc:  # noqa: BLE001 - collected and asserted on below
                errors.append(exc)

        threads = [threading.Thread(target=publish) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(results) == 4 and all(r == results[0] for r in results)
        assert sorted(p.name for p in where.iterdir()) == sorted(p.name for p in results[0])   # no leftovers
