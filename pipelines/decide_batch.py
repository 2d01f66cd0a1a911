"""Stage (bounded replays only): every round of an IP at once, decided without timers.

A bounded replay has the whole window before it: grouping each IP's rounds (one ``GroupByKey``)
and replaying the per-IP stage's wake-ups in time order in plain Python
(:meth:`scanflow.lifecycle.step.Lifecycle.run`) gives the decisions and commands the timers of
:mod:`pipelines.per_ip_stage` give on the same rounds, at a fraction of the cost: no keyed state, no
timer, one call per IP. The live scheduler cannot do this (it never has an IP's future rounds), so
it keeps :class:`~pipelines.per_ip_stage.DetectChanges`; both are tested to decide alike.

Outputs as :class:`~pipelines.per_ip_stage.DetectChanges`: decisions (main), ``commands``, ``states``
(empty unless ``emit_states``; a replay writes no ip-state).
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from pipelines.per_ip_stage import COMMANDS, STATES, CountReporter, emit
from scanflow.lifecycle.rounds import Round
from scanflow.lifecycle.state import RefTable
from scanflow.lifecycle.step import Lifecycle, group_of, moves_of

class _WithTime(beam.DoFn):
    """``(ip, Round)`` -> ``(key, (element time in micros, round tuple))``: the time the per-IP
    stage would wake up for the round, under the stage's key (the address, or its /24 with devices
    that move: :meth:`Lifecycle.group_of`)."""

    def __init__(self, moves: bool):
        self._moves = moves

    def process(self, element, ts=beam.DoFn.TimestampParam):
        ip, rnd = element
        yield group_of(ip, self._moves), (ts.micros, tuple(rnd))


class _DecideFn(beam.DoFn):
    def __init__(self, policy, *, recent_scans: int, command_ttl_s: float, round_timeout_s: float,
                 horizon: float | None, emit_states: bool, forget_s: float):
        self._policy = policy
        self._args = dict(recent_scans=recent_scans, command_ttl_s=command_ttl_s,
                          round_timeout_s=round_timeout_s, horizon=horizon)
        self._ttl, self._emit_states, self._forget_s = command_ttl_s, emit_states, forget_s

    def setup(self):
        self._lifecycle = Lifecycle(self._policy, **self._args)
        self._refs = RefTable.of_policy(self._policy)
        self._name = self._policy.name
        self._counts = CountReporter(self._lifecycle.counts)

    def process(self, element):
        key, items = element
        rounds = [(us, Round(*r)) for us, r in items]
        for o in self._lifecycle.run(key, rounds, forget_s=self._forget_s):
            yield from emit(o, self._name, self._ttl, self._refs, self._emit_states)

    def finish_bundle(self):
        self._counts.flush()


class DecideInBatch(beam.PTransform):
    """``(ip, Round)`` -> ``(decisions, commands, states)`` for a bounded window; the arguments are
    :class:`~pipelines.per_ip_stage.DetectChanges`'s."""

    def __init__(self, policy, *, recent_scans: int = 4, command_ttl_s: float, round_timeout_s: float,
                 horizon: float | None = None, emit_states: bool = False, forget_s: float = 24 * 3600.0):
        super().__init__()
        self._fn = _DecideFn(policy, recent_scans=recent_scans, command_ttl_s=command_ttl_s,
                             round_timeout_s=round_timeout_s, horizon=horizon, emit_states=emit_states,
                             forget_s=forget_s)

    def expand(self, keyed: Any):
        out = (keyed
               | "WithTime" >> beam.ParDo(_WithTime(moves_of(self._fn._policy))).with_output_types(beam.typehints.KV[str, Any])
               | "ByIp" >> beam.GroupByKey()
               | "Decide" >> beam.ParDo(self._fn).with_outputs(COMMANDS, STATES, main="decisions"))
        return out.decisions, out[COMMANDS], out[STATES]
