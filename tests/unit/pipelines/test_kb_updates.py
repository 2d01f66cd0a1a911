"""Knowledge updates in the scheduler: which addresses the fan-out selects, and what the per-IP step
does with an update (rescan once, on the open ports plus the model's new ports), without Beam."""

from __future__ import annotations

from pipelines.kb_updates import changes_of, select_affected
from pipelines.per_ip_stage import _from_bag, _to_bag
from pipelines.policy_setup import build_policy
from pipelines.settings import PipelineSettings
from scanflow.config import Settings
from scanflow.lifecycle.records import micros
from scanflow.lifecycle.rounds import Round
from scanflow.lifecycle.state import RefTable, pack, unpack
from scanflow.lifecycle.step import Due, KnowledgeUrgent, Lifecycle, Snapshot, urgent_ports
from scanflow.policy import HOUR, Reason
from scanflow.portsets import PortSet

POLICY = build_policy(Settings(), PipelineSettings(), name="paper")
SILENT = ("provisional-silent", 1, ())
IP = "192.0.2.10"
T0 = 1_700_000_000.0
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"


def _state(device):
    return {"ip": "x", "device": device}


def test_the_fan_out_selects_addresses_whose_last_state_names_an_affected_model():
    states = [("198.18.0.1", _state("hikvision-ipc")), ("198.18.0.2", _state("dahua-ipc")),
              ("198.18.0.3", _state("hikvision-ipc")), ("198.18.0.3", None),          # demoted since
              ("198.18.0.4", _state(None)), ("198.18.0.4", _state("synology-dsm")),   # estimated since
              ("198.18.0.5", _state("synology-dsm")), ("198.18.0.5", _state("dahua-ipc")),  # another model now
              ("198.18.0.6", None)]
    assert select_affected(states, {"hikvision-ipc", "synology-dsm"}) == {
        "198.18.0.1": "hikvision-ipc", "198.18.0.4": "synology-dsm"}
    assert select_affected(states, set()) == {}


def test_changes_are_sorted_and_deduplicated():
    record = {"changes": [{"model": "b", "new_ports": [9, 3, 3]}, {"model": "a", "new_ports": [1]}]}
    assert changes_of(record) == (("a", (1,)), ("b", (3, 9)))


def _lc():
    return Lifecycle(POLICY, command_ttl_s=6 * HOUR, round_timeout_s=HOUR)


def _round(scan, at, responses=((80, HIK, "http"), (554, None, None))):
    us = micros(at)
    return Round(IP, scan, "agent", None, "EFFICIENT", us - 30_000_000, us, SILENT, 0, tuple(responses),
                 "COMPLETE")


def _tracked_hikvision(lc):
    t, out, _ = lc.wake(IP, None, [(micros(T0), _round("a", T0))], micros(T0))
    assert t.state.device == "hikvision-ipc" and t.state.open_ports == {80, 554}
    return t


def _update(at, changes=(("hikvision-ipc", (9527, 37777)),), uid="kbu-1"):
    return KnowledgeUrgent(uid, micros(at), tuple(changes))


def test_an_affected_address_is_rescanned_at_the_updates_time_on_its_open_and_new_ports():
    lc = _lc()
    t = _tracked_hikvision(lc)
    u = _update(T0 + HOUR)
    t2, out, rest = lc.wake(IP, t, [(u.at_us, u)], micros(T0 + HOUR))
    due, snap = out
    assert isinstance(due, Due) and due.reason is Reason.URGENT and due.at == T0 + HOUR
    assert due.ports == PortSet.inline({80, 554, 9527, 37777}) and due.ports.label == "kb-update"
    assert isinstance(snap, Snapshot) and snap.tracked is t2 and rest == []
    assert t2.issued and t2.next_at == T0 + HOUR and t2.reason is Reason.URGENT
    assert lc.due_at(t2) == T0 + HOUR + 7 * HOUR        # the watchdog, if the round never comes
    assert lc.counts["kb_update_rescans"] == 1


def test_an_update_waits_for_the_watermark_like_a_round():
    lc = _lc()
    t = _tracked_hikvision(lc)
    u = _update(T0 + HOUR)
    same, out, rest = lc.wake(IP, t, [(u.at_us, u)], micros(T0 + HOUR) - 1)
    assert same is t and out == [] and rest == [(u.at_us, u)]


def test_other_models_and_untracked_addresses_are_left_alone():
    lc = _lc()
    t = _tracked_hikvision(lc)
    u = _update(T0 + HOUR, (("dahua-ipc", (37777,)),))
    assert lc.wake(IP, t, [(u.at_us, u)], micros(T0 + HOUR))[:2] == (t, [])
    assert lc.wake(IP, None, [(u.at_us, u)], micros(T0 + HOUR))[:2] == (None, [])
    assert lc.counts["kb_update_other_model"] == 1 and lc.counts["kb_update_untracked"] == 1


def test_an_update_read_again_is_not_applied_again():
    lc = _lc()
    t = _tracked_hikvision(lc)
    u = _update(T0 + HOUR)
    t2, _, _ = lc.wake(IP, t, [(u.at_us, u)], micros(T0 + HOUR))
    refs = RefTable.of_policy(POLICY)
    restored = unpack(pack(t2, refs), refs)                    # a restart restores the urgent state
    assert lc.wake(IP, restored, [(u.at_us, u)], micros(T0 + HOUR + 60))[:2] == (restored, [])
    # its round came back and was decided: read again after that, still nothing
    rnd = _round("urgent", T0 + HOUR + 120, ((80, HIK, "http"), (554, None, None), (9527, None, None)))
    t3, out, _ = lc.wake(IP, t2, [(rnd.ended_us, rnd)], rnd.ended_us)
    assert 9527 in t3.state.open_ports and not t3.issued
    assert lc.wake(IP, t3, [(u.at_us, u)], micros(T0 + 2 * HOUR))[:2] == (t3, [])
    assert lc.counts["kb_update_applied_before"] == 2
    # a later update of the same model is a new one
    assert isinstance(lc.wake(IP, t3, [(micros(T0 + 3 * HOUR), _update(T0 + 3 * HOUR, uid="kbu-2"))],
                              micros(T0 + 3 * HOUR))[1][0], Due)


def test_rounds_and_updates_are_applied_in_event_time_order():
    lc = _lc()
    t = _tracked_hikvision(lc)
    u = _update(T0 + HOUR)
    later = _round("b", T0 + HOUR + 30)                        # ended after the update (an older command)
    t2, out, _ = lc.wake(IP, t, [(later.ended_us, later), (u.at_us, u)], later.ended_us)
    assert [type(o).__name__ for o in out] == ["Due", "Decided", "Snapshot"]
    assert out[0].reason is Reason.URGENT


def test_more_than_64_ports_fall_back_to_the_policys_full_set():
    assert urgent_ports(range(1, 40), range(40, 65)) == PortSet.inline(range(1, 65))
    assert urgent_ports(range(1, 40), range(40, 66)) is None
    lc = _lc()
    t = _tracked_hikvision(lc)
    u = _update(T0 + HOUR, (("hikvision-ipc", tuple(range(1000, 1070))),))
    (due, _), = [lc.wake(IP, t, [(u.at_us, u)], micros(T0 + HOUR))[1]]
    assert due.ports == POLICY.estimator.port_set("hikvision-ipc")


def test_the_stage_keeps_waiting_updates_and_rounds_apart_in_its_bag():
    u = _update(T0)
    rnd = _round("a", T0)
    assert _from_bag(_to_bag(u)) == u and isinstance(_from_bag(_to_bag(u)), KnowledgeUrgent)
    assert _from_bag(_to_bag(rnd)) == rnd and isinstance(_from_bag(_to_bag(rnd)), Round)
