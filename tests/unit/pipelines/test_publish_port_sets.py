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
    policy = build_policy(settings, PipelineSettings())
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
