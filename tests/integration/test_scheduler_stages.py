"""The scheduler's stages in event time, driven by ``TestStream`` on the session's Prism runner.

One stream plays the life of a few IPs: a scan closed by its ScanDone, a scan whose agent died
(closed by the round timeout), a second and third round of the same IP (unchanged, then changed), a
round and a whole scan delivered twice, a sweep of a block. The expected decisions come from the
policy core driven directly; every output carries the event time it was emitted at, so a timer
that fires early or late, or a round closed before its ScanDone, shows up as a wrong timestamp.
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.transforms.window import TimestampedValue

from scanflow.lifecycle.rounds import Done, Event, ref_of
from pipelines.policy_setup import build_policy
from scanflow.lifecycle.records import command_id, micros
from pipelines.scheduler import Scheduler
from pipelines.settings import PipelineSettings
from scanflow.config import Settings
from scanflow.policy import HOUR, Observation

T0 = 1_700_000_000.0
A, B, C = "192.0.2.1", "192.0.2.2", "192.0.2.20"
HIK = b"HTTP/1.1 200 OK\r\nServer: Hikvision-Webs\r\n\r\n"
NGINX = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\n\r\n"
SETTINGS = PipelineSettings(round_timeout_s=600, command_ttl_s=3600, dedupe_horizon_s=2 * HOUR, rewind_s=3600)
POLICY = build_policy(Settings(), SETTINGS, name="paper")
SILENT = POLICY.port_sets.silent
SILENT_REF = (SILENT.name, SILENT.version, ())
HORIZON = T0 + 5 * 24 * HOUR


def _ev(scan, ip, port, t, banner=None):
    return TimestampedValue(Event(scan, ip, port, banner, "http" if banner else None, micros(t), "agent-1"), t)


def _done(scan, target, t, port_set=SILENT_REF, status="COMPLETE"):
    return TimestampedValue(Done(scan, target, "agent-1", None, "EFFICIENT", micros(t - 30), micros(t), port_set,
                                 0, status), t)


def _ms_ceil(seconds: float) -> int:
    us = micros(seconds)
    return -(-us // 1000) * 1000


class _AppendStamped(beam.DoFn):
    """Appends (element, its event time in micros) as a JSON line to ``path``: what a stage emitted,
    and when. LOOPBACK workers run in the test process, so the file is the test's."""

    def __init__(self, path: str):
        self._path = path

    def process(self, element, ts=beam.DoFn.TimestampParam):
        line = json.dumps([element, ts.micros], default=lambda o: o.hex() if isinstance(o, bytes) else repr(o))
        with open(self._path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _oracle(rounds: dict[str, list[tuple[str, float, Observation]]]):
    """What the scheduler must do, from the policy core and the documented timing rules: each round
    is decided at its end; a tracked IP's command is issued at its plan's time if no round came
    first; with no round back ``command_ttl_s + round_timeout_s`` later, the policy decides on an
    inconclusive round (the watchdog). Nothing is scheduled at or after the horizon.

    Returns decisions ``(ip, scan id, time, state, plan)`` and commands ``(ip, time, reason)``."""
    decisions, commands = [], []
    watchdog = SETTINGS.command_ttl_s + SETTINGS.round_timeout_s
    for ip, todo in rounds.items():
        state, plan, issued = None, None, False
        queue = list(todo)
        while True:
            nxt = queue[0][1] if queue else float("inf")
            due = None if plan is None or not state.responsive else (plan.at + watchdog if issued else plan.at)
            if due is not None and due >= HORIZON:
                due = None
            if due is not None and due < nxt:
                if not issued:
                    commands.append((ip, plan.at, plan.reason.value))
                    issued = True
                else:
                    state, plan = POLICY.decide(state, Observation.of([], complete=False), due)
                    decisions.append((ip, None, due, state, plan))
                    issued = False
                continue
            if not queue:
                break
            scan, at, obs = queue.pop(0)
            state, plan = POLICY.decide(state, obs, at)
            decisions.append((ip, scan, at, state, plan))
            issued = False
    return decisions, commands


def _plans_of_a():
    """A's first two plans: its second round is sent after the first, its third after the second."""
    a1, p1 = POLICY.decide(None, Observation.of([80], {80: HIK}, probed=SILENT), T0 + 30)
    _, p2 = POLICY.decide(a1, Observation.of([80], {80: HIK}, probed=p1.ports), p1.at + 60)
    return p1, p2


def test_rounds_changes_and_timers_in_event_time(prism_options, assert_ran_on_prism, tmp_path):
    plan1, plan2 = _plans_of_a()
    first_due = plan1.at
    expected, expected_cmds = _oracle({
        A: [("s1", T0 + 30, Observation.of([80], {80: HIK}, probed=SILENT)),
            ("s2", first_due + 60, Observation.of([80], {80: HIK}, probed=plan1.ports)),
            ("s3", plan2.at + 60, Observation.of([80], {80: NGINX}, probed=plan2.ports))],
        B: [("s-dead", T0 + 2 + SETTINGS.round_timeout_s, Observation.of([22], complete=False))],
        C: [("sweep-1", T0 + 3 * HOUR + 30, Observation.of([23], probed=SILENT))]})
    # The stream below is written around these times; the oracle must agree with it.
    assert [d[1] for d in expected if d[0] == A][:3] == ["s1", "s2", "s3"]
    stream = (EventStream()
              .advance_watermark_to(T0)
              # A: scan s1, closed by its ScanDone at T0 + 30.
              .add_elements([_ev("s1", A, 80, T0 + 1), _ev("s1", A, 80, T0 + 1.5, HIK)])
              # B: the agent died after one response: no ScanDone ever.
              .add_elements([_ev("s-dead", B, 22, T0 + 2)])
              .add_elements([_done("s1", A, T0 + 30)])
              .advance_watermark_to(T0 + 29)
              .advance_watermark_to(T0 + 31)
              # s1 again (agent retry) after it closed: dropped by the round stage.
              .add_elements([_ev("s1", A, 80, T0 + 1.5, HIK), _done("s1", A, T0 + 30)])
              .advance_watermark_to(T0 + 3 * HOUR)
              # A sweep of a /28: C answers it and is promoted; the block's ScanDone closes C's round.
              # The ScanDone arrives first (another partition was faster): the round still waits
              # for the watermark to pass it, so C's response is in.
              .add_elements([_done("sweep-1", "192.0.2.16/28", T0 + 3 * HOUR + 30)])
              .add_elements([_ev("sweep-1", C, 23, T0 + 3 * HOUR + 5)])
              .advance_watermark_to(first_due + 10)
              # A: second round after the first command, same answer.
              .add_elements([_ev("s2", A, 80, first_due + 40, HIK),
                             _done("s2", A, first_due + 60, port_set=ref_of(plan1.ports))])
              .advance_watermark_to(first_due + 4 * HOUR)
              # s1 once more, after the round stage forgot it (dedupe horizon): the IP's state
              # remembers the scan id, so still no second decision.
              .add_elements([_ev("s1", A, 80, T0 + 1.5, HIK), _done("s1", A, T0 + 30)])
              .advance_watermark_to(plan2.at + 10)
              # A: third round, the banner changed.
              .add_elements([_ev("s3", A, 80, plan2.at + 40, NGINX),
                             _done("s3", A, plan2.at + 60, port_set=ref_of(plan2.ports))])
              .advance_watermark_to(HORIZON + 10))
    options = prism_options()
    p = beam.Pipeline(options=options)
    events = p | "Stream" >> stream
    out = events | "Schedule" >> Scheduler(POLICY, SETTINGS, horizon=HORIZON, archive=True)
    for name, pcoll in (("decisions", out.decisions), ("commands", out.commands), ("states", out.states),
                        ("observations", out.observations)):
        _ = pcoll | f"Write{name}" >> beam.ParDo(_AppendStamped(str(tmp_path / name)))
    result = p.run()
    result.wait_until_finish()
    assert_ran_on_prism(result, options)

    def read(name):
        path = tmp_path / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    decisions = read("decisions")
    got = sorted(((d["ip"], d["scan_id"], d["decided_at"], d["reason"], d["backoff_step"], d["device"],
                   d["next_scan_at"], ts) for d, ts in decisions), key=repr)
    want = sorted(((ip, scan, micros(at), plan.reason.value, state.step, state.device, micros(plan.at), _ms_ceil(at))
                   for ip, scan, at, state, plan in expected), key=repr)
    # Each decision once, at the event time its round closed (the ScanDone, or the timeout) or its
    # watchdog fired; the watchdog keeps retrying IPs whose scans never come back.
    assert got == want
    assert sum(1 for d in expected if d[1] is None) >= 3

    commands = read("commands")
    issued = sorted((cmd["targets"][0], cmd["not_before"], cmd["reason"], ts) for (_, cmd), ts in commands)
    # Each command once, exactly when the watermark reached its IP's next scan time.
    assert issued == sorted((ip, micros(at), reason, _ms_ceil(at)) for ip, at, reason in expected_cmds)
    assert (A, micros(first_due), "NEW_RESPONDER", _ms_ceil(first_due)) in issued
    assert {cmd["command_id"] for (_, cmd), _ in commands} == {command_id("EFFICIENT", c[0], c[1]) for c in issued}

    observations = read("observations")
    assert sorted((o["ip"], o["scan_id"], o["status"], o["device"]) for o, _ in observations) == sorted([
        (A, "s1", "COMPLETE", "hikvision-ipc"), (B, "s-dead", "TIMED_OUT", None),
        (C, "sweep-1", "COMPLETE", None), (A, "s2", "COMPLETE", "hikvision-ipc"),
        (A, "s1", "COMPLETE", "hikvision-ipc"),  # assembled again after the horizon; the IP stage drops it
        (A, "s3", "COMPLETE", None)])

    # State changes: the last record of each IP is its live state; A ends unestimated on step 0.
    last = {}
    for (ip, record, headers), ts in read("states"):
        last[ip] = (record, ts)
    assert last[A][0]["status"] == "RESPONSIVE_UNESTIMATED" and last[A][0]["backoff_step"] == 0
    assert last[A][0]["port_digests"] and last[A][0]["probed"] == {"name": None, "version": None,
                                                                  "ports": sorted(POLICY.estimator.port_set(
                                                                      "hikvision-ipc").ports)}

