"""Devices that move in the live stage (:class:`pipelines.per_ip_stage.DetectChanges`): with
``moves`` the stage is keyed by /24, restored states and knowledge updates reach their address
inside the /24's key, and a device that another address of the /24 remembers resumes its state."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines.per_ip_stage import DetectChanges, RestoreRecord, _keyed
from scanflow.adaptive import AdaptiveParams, make_policy
from scanflow.estimate import Estimator
from scanflow.knowledge import load_knowledge
from scanflow.lifecycle.records import micros
from scanflow.lifecycle.rounds import Round, ref_of
from scanflow.lifecycle.state import RefTable, Tracked, pack_header
from scanflow.lifecycle.step import KnowledgeUrgent
from scanflow.policy import HOUR, PolicyPortSets, Reason
from scanflow.portsets import PortSet

T0 = 1_700_000_000.0
HIK = b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 12:34:56 GMT\r\nServer: Hikvision-Webs\r\n\r\n"
RANKING = (80, 23, 554, 8000, 443, 22) + tuple(p for p in range(1, 2001) if p not in (80, 23, 554, 443, 22))
SETS = PolicyPortSets(PortSet.named("standard", 1, set(RANKING)), PortSet.named("silent", 1, RANKING[:10]),
                      PortSet.named("unknown", 1, RANKING[:1000]), RANKING,
                      tuple(min(1.0, 0.5 + 0.1 * k) for k in range(len(RANKING))))
A, B = "198.18.7.10", "198.18.7.20"


def _policy(moves: bool):
    return make_policy("adaptive", SETS, Estimator(load_knowledge()),
                       adaptive_params=AdaptiveParams(light_ports=4, initial_scan="light", moves=moves))


def _remembered_camera(pol):
    """A camera seen at T0, classified, then silent: the state the address it left keeps."""
    from scanflow.policy import Observation

    state, plan = pol.start(T0)
    state, plan = pol.decide(state, Observation.of([80], {80: HIK}, plan.ports), T0)
    state, plan = pol.decide(state, Observation.of([80, 554], {80: HIK}, plan.ports), T0 + 300)
    state, plan = pol.decide(state, Observation.of([80, 554], {80: HIK}, plan.ports), plan.at)
    left = plan.at
    gone, plan = pol.decide(state, Observation.of([], {}, plan.ports), left)
    return Tracked(gone, plan.at, Reason.SWEEP, False, left, left), left


def test_keys_are_the_24_and_restores_and_updates_keep_their_address():
    rnd = Round(B, "s", "a", None, "EFFICIENT", 0, 1, None, 0, (), "COMPLETE")
    restore = RestoreRecord(None, None, 1.0)
    update = KnowledgeUrgent("u1", 5, (("m", (81,)),))
    assert _keyed((B, rnd), False) == (B, rnd)
    assert _keyed((B, rnd), True) == ("198.18.7.0/24", rnd)
    assert _keyed((A, restore), True) == ("198.18.7.0/24", restore._replace(ip=A))
    assert _keyed((A, update), True) == ("198.18.7.0/24", update._replace(ip=A))


@pytest.mark.parametrize("moves", [True, False])
def test_the_live_stage_lends_a_restored_memory_to_the_address_the_device_moved_to(moves):
    """A restart restores .10's remembered camera; 6 h after it left, the camera answers at .20. With
    devices that move .20 resumes the camera (its step, no follow-up); without, .20 is a new responder
    followed up minutes later."""
    pol = _policy(moves)
    refs = RefTable.of_policy(pol)
    tracked, left = _remembered_camera(pol)
    at = left + 6 * HOUR
    light = pol.port_sets.light
    answer = Round(B, "s-b", "agent", None, "EFFICIENT", micros(at) - 30_000_000, micros(at), ref_of(light),
                   len(light), ((80, HIK, "http"), (554, None, None)), "COMPLETE")
    items = [TimestampedValue((A, RestoreRecord(pack_header(tracked, left, refs), None, left)), 0),
             TimestampedValue((B, answer), at)]
    p = beam.Pipeline(runner=FnApiRunner())
    decisions, commands, _ = (p | beam.Create(items, reshuffle=False)
                              | DetectChanges(pol, command_ttl_s=600, round_timeout_s=600, horizon=at + 3600))
    # (the next light probes, 12 h on, are after the horizon)
    if moves:
        want = [(B, "NON_RESPONSIVE", "BACKOFF", 1, "hikvision-ipc")]
        want_commands = []
    else:
        want = [(B, "UNKNOWN", "NEW_RESPONDER", 0, "hikvision-ipc")]     # named from its banner, followed up
        want_commands = [(B, "followup")]
    assert_that(decisions | "D" >> beam.Map(lambda d: (d["ip"], d["previous_status"], d["reason"], d["backoff_step"],
                                                        d["device"]) if d["scan_id"] else ("watchdog", d["ip"])),
                equal_to(want + ([] if moves else [("watchdog", B)])), label="decisions")
    assert_that(commands | "C" >> beam.Map(lambda kv: (kv[0], kv[1]["port_set"]["name"])),
                equal_to(want_commands), label="commands")
    p.run().wait_until_finish()


def test_a_knowledge_update_reaches_its_address_inside_the_24_key():
    """Keyed by /24, a knowledge update for .10 (a tracked camera) rescans .10 at the update's time on
    its ports and the model's new port, and nothing else of the /24."""
    from scanflow.policy import Observation

    pol = _policy(True)
    refs = RefTable.of_policy(pol)
    state, plan = pol.start(T0)
    state, plan = pol.decide(state, Observation.of([80], {80: HIK}, plan.ports), T0)
    state, plan = pol.decide(state, Observation.of([80, 554], {80: HIK}, plan.ports), T0 + 300)
    camera = Tracked(state, plan.at, plan.reason, False, T0 + 300, T0 + 300)
    at = T0 + 3600
    update = KnowledgeUrgent("u1", micros(at), (("hikvision-ipc", (8443,)),))
    other = RestoreRecord(pack_header(None, T0, refs), None, T0)      # .20: a tombstone, untracked
    items = [TimestampedValue((A, RestoreRecord(pack_header(camera, T0 + 300, refs), None, T0 + 300)), 0),
             TimestampedValue((B, other), 0),
             TimestampedValue((A, update), at)]
    p = beam.Pipeline(runner=FnApiRunner())
    _, commands, _ = (p | beam.Create(items, reshuffle=False)
                      | DetectChanges(pol, command_ttl_s=600, round_timeout_s=600, horizon=at + 60))
    assert_that(commands | beam.Map(lambda kv: (kv[0], kv[1]["reason"], sorted(kv[1]["port_set"]["ports"]))),
                equal_to([(A, "URGENT", [80, 554, 8443])]))
    p.run().wait_until_finish()
