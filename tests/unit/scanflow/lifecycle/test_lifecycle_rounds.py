"""Events -> scan rounds -> policy observations, and the records the scheduler writes (checked
against the real codec, so they honour the contract)."""

from __future__ import annotations

from connectors.avro_codec import AvroCodec, make_record
from scanflow.lifecycle.rounds import TIMED_OUT, Done, Event, assemble, observation, published_sets
from pipelines.decode import from_record
from pipelines.policy_setup import build_policy
from scanflow.lifecycle.records import command_record, decision_record, ip_state_record, observation_record
from pipelines.settings import PipelineSettings
from scanflow.config import Settings
from scanflow.policy import IpStatus

POLICY = build_policy(Settings(), PipelineSettings(), name="paper")
SILENT = POLICY.port_sets.silent
PUBLISHED = published_sets(POLICY)
T = 1_700_000_000_000_000
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"


def _done(target, status="COMPLETE", scan="s1", port_set=("provisional-silent", 1, ())):
    return Done(scan, target, "agent-1", "cmd-1", "EFFICIENT", T, T + 30_000_000, port_set, len(SILENT), status)


def test_decoded_records_become_items_and_udp_is_left_out():
    ev = make_record("ScanEvent", scan_id="s1", agent_id="a", ip="192.0.2.1", port=80, transport="TCP",
                     kind="BANNER", timestamp=T, banner=HIK, banner_protocol="http")
    assert from_record("ScanEvent", ev) == Event("s1", "192.0.2.1", 80, HIK, "http", T, "a")
    syn = dict(ev, kind="SYN_ACK", banner=None)
    assert from_record("ScanEvent", syn).banner is None
    assert from_record("ScanEvent", dict(ev, transport="UDP")) is None
    done = make_record("ScanDone", scan_id="s1", target="192.0.2.0/28", started_at=T, ended_at=T + 5,
                       status="COMPLETE", port_set={"name": "provisional-silent", "version": 1, "ports": []})
    assert from_record("ScanDone", done).port_set == ("provisional-silent", 1, ())
    assert from_record("IpState", {}) is None


def test_a_round_keeps_one_response_per_port_preferring_banners():
    events = [Event("s1", "192.0.2.1", 80, None, None, T + 1, "a"),
              Event("s1", "192.0.2.1", 80, HIK, "http", T + 2, "a"),
              Event("s1", "192.0.2.1", 80, b"later", "http", T + 3, "a"),  # a retry: the first banner wins
              Event("s1", "192.0.2.1", 554, None, None, T + 4, "a")]
    (rnd,) = assemble("s1", events, _done("192.0.2.1"), T + 99)
    assert rnd.responses == ((80, HIK, "http"), (554, None, None))
    assert rnd.complete and rnd.ended_us == T + 30_000_000 and rnd.command_id == "cmd-1"


def test_a_silent_single_target_gives_an_empty_round_and_a_range_gives_only_responders():
    (silent,) = assemble("s1", [], _done("192.0.2.9"), T)
    assert silent.ip == "192.0.2.9" and silent.responses == () and silent.complete
    sweep = assemble("s2", [Event("s2", "192.0.2.3", 80, None, None, T, "a"),
                            Event("s2", "192.0.2.7", 23, None, None, T, "a")], _done("192.0.2.0/28", scan="s2"), T)
    assert [r.ip for r in sweep] == ["192.0.2.3", "192.0.2.7"]


def test_a_scan_without_its_done_times_out_incomplete():
    (rnd,) = assemble("s3", [Event("s3", "192.0.2.1", 80, HIK, "http", T + 5, "a")], None, T + 3_600_000_000)
    assert rnd.status == TIMED_OUT and not rnd.complete and rnd.ended_us == T + 3_600_000_000
    assert rnd.started_us == T + 5 and rnd.port_set is None
    obs = observation(rnd, PUBLISHED)
    assert obs.open_ports == {80} and obs.probed is None and not obs.complete


def test_observation_resolves_named_and_inline_probed_sets():
    (rnd,) = assemble("s1", [Event("s1", "192.0.2.1", 80, HIK, "http", T, "a")], _done("192.0.2.1"), T)
    obs = observation(rnd, PUBLISHED)
    assert obs.probed is SILENT and obs.banners == ((80, HIK),) and obs.complete
    inline = _done("192.0.2.1", port_set=(None, None, (80, 554)))
    assert observation(assemble("s1", [], inline, T)[0], PUBLISHED).probed.ports == {80, 554}
    unknown = _done("192.0.2.1", port_set=("elsewhere", 3, ()))
    assert observation(assemble("s1", [], unknown, T)[0], PUBLISHED).probed is None


def test_records_pass_the_contract_codec():
    codec = AvroCodec()
    (rnd,) = assemble("s1", [Event("s1", "192.0.2.1", 80, HIK, "http", T, "a")], _done("192.0.2.1"), T)
    obs = observation(rnd, PUBLISHED)
    state, plan = POLICY.decide(None, obs, rnd.at)
    assert state.status is IpStatus.RESPONSIVE_ESTIMATED
    records = {
        "Observation": observation_record(rnd, fingerprint="ab" * 16, device=state.device),
        "Decision": decision_record(ip=rnd.ip, policy="EFFICIENT", decided_at=rnd.at, scan_id="s1", previous=None,
                                    state=state, plan=plan, tracked=True),
        "IpState": ip_state_record(rnd.ip, "EFFICIENT", state, plan.at, rnd.at, SILENT),
        "ScanCommand": command_record(policy="EFFICIENT", target=rnd.ip, not_before=plan.at, ttl_s=3600,
                                      ports=plan.ports, reason=plan.reason.value),
    }
    for name, record in records.items():
        decoded = codec.decode(codec.encode(name, record))
        assert decoded.schema == name
        for key, value in record.items():
            assert decoded.record[key] == value, (name, key)
    # The decision names the very command the timer will issue for its next scan.
    assert records["Decision"]["command_id"] == records["ScanCommand"]["command_id"]
    assert records["IpState"]["port_digests"] and records["IpState"]["probed"] == SILENT.to_record()
