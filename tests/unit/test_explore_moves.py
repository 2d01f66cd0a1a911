"""The exploration of moved devices (``bench/explore_moves.py``), on hand-made addresses: a camera
leaves one address of a /24 and answers at another; the figures in docs/EVALUATION.md rest on this."""

from __future__ import annotations

import importlib.util

from scanflow.adaptive import AdaptiveParams, make_policy
from scanflow.config import REPO_ROOT
from scanflow.policy import IpStatus, Reason
from tests.unit.scanflow.test_adaptive import ESTIMATOR, HIK, HIK_LATER, NGINX, SETS, T0, obs

_spec = importlib.util.spec_from_file_location("explore_moves", REPO_ROOT / "bench" / "explore_moves.py")
explore = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(explore)

Y, X, OTHER_24 = 5, 7, 256 + 7     # address numbers: Y and X share a /24


def lifecycle(rule: str):
    pol = make_policy("adaptive", SETS, ESTIMATOR, adaptive_params=AdaptiveParams(light_ports=4, initial_scan="light"))
    return explore.MovingLifecycle(pol, explore.MoveDirectory(pol.params.memory_for), rule)


def camera_appears(life, ip: int, t0: float):
    """A camera answers at ``ip``, is classified and backs off once; its tracked state."""
    pol = life.policy
    t, _ = life.observe(ip, None, obs([80], {80: HIK}, pol.port_sets.light), t0)
    t, _ = life.observe(ip, t, obs([80, 554], {80: HIK}, pol.port_sets.followup), t0 + 300)
    t, _ = life.observe(ip, t, obs([80, 554], {80: HIK}, pol.ports_for(t.state)), t.next_at)
    assert t.state.step == 1 and t.state.device is not None
    return t


def camera_goes(life, ip: int, t) -> float:
    """The camera at ``ip`` goes silent (the policy remembers it there); when."""
    now = t.next_at
    _, decided = life.observe(ip, t, obs([], (), life.policy.ports_for(t.state)), now)
    assert decided.state.recall == {80, 554} and not decided.state.responsive
    return now


def camera_leaves(life, ip: int, t0: float) -> tuple[float, int]:
    t = camera_appears(life, ip, t0)
    return camera_goes(life, ip, t), t.state.step


def test_a_camera_moving_within_its_24_keeps_its_estimate_and_back_off_step():
    life = lifecycle("unique")
    left_at, step = camera_leaves(life, Y, T0)
    assert step == 1
    t, decided = life.observe(X, None, obs([80, 554], {80: HIK_LATER}, life.policy.port_sets.light), left_at + 3600)
    assert t.state.status is IpStatus.RESPONSIVE_ESTIMATED and t.state.device == "hikvision-ipc"
    assert t.state.step == step and t.state.open_ports == {80, 554}
    assert decided.plan.reason is Reason.BACKOFF and not decided.plan.changed
    assert decided.plan.ports is not life.policy.port_sets.followup
    assert life.directory.stats["kept"] == 1
    # taken out of the directory: a second camera answering alike elsewhere is new
    _, again = life.observe(X + 1, None, obs([80, 554], {80: HIK_LATER}, life.policy.port_sets.light), left_at + 7200)
    assert again.plan.ports is life.policy.port_sets.followup and again.plan.reason is Reason.NEW_RESPONDER


def test_without_the_directory_or_outside_the_24_or_as_another_device_it_is_new():
    for rule, ip, banner in (("off", X, HIK_LATER), ("unique", OTHER_24, HIK_LATER), ("unique", X, NGINX)):
        life = lifecycle(rule)
        left_at, _ = camera_leaves(life, Y, T0)
        t, decided = life.observe(ip, None, obs([80, 554], {80: banner}, life.policy.port_sets.light), left_at + 3600)
        assert decided.plan.ports is life.policy.port_sets.followup, (rule, ip, banner)
        assert decided.plan.reason is Reason.NEW_RESPONDER and t.state.step == 0
        assert life.directory.stats["kept"] == 0


def test_two_cameras_answering_alike_are_ambiguous_for_unique_and_taken_by_any():
    for rule, kept in (("unique", False), ("any", True)):
        life = lifecycle(rule)
        first, second = camera_appears(life, Y, T0), camera_appears(life, Y + 1, T0 + 60)
        camera_goes(life, Y, first)
        left_at = camera_goes(life, Y + 1, second)
        _, decided = life.observe(X, None, obs([80, 554], {80: HIK_LATER}, life.policy.port_sets.light), left_at + 3600)
        assert (decided.plan.ports is not life.policy.port_sets.followup) is kept, rule
        assert life.directory.stats["ambiguous"] == (0 if kept else 1)
