"""Stage: scan-round assembly. Events of one scan are gathered until its ScanDone (or a timeout).

Keyed by **scan id**, not by IP: a sweep is one scan of a whole CIDR block whose single ScanDone
(keyed by the block) closes the rounds of every address that answered in it; a per-IP key would
never see that ScanDone. Grouping by IP happens when the scan closes, so the output is still one
round per (ip, scan id) (:func:`pipelines.glue.assemble`).

Time: a round closes when the watermark passes its ScanDone's element time (so every response sent
before the ScanDone is in, whatever partition it came through), or ``round_timeout_s`` after its
first response when the ScanDone never comes (the agent died): then it is ``TIMED_OUT``, which the
policy treats as not complete. A closed scan id is remembered for ``dedupe_horizon_s``: a round
delivered again (agent retry, replay overlap) is not assembled twice.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.timeutil import TimeDomain

from pipelines.glue import US, Done, Event, assemble, timer_time

_METRICS = "scanflow.rounds"
_OPEN, _CLOSED = 0, 1


class _AssembleFn(beam.DoFn):
    """Per scan id: a bag of responses, the ScanDone when it came, one event-time timer."""

    EVENTS = BagStateSpec("events", FastPrimitivesCoder())
    # (phase, first element time in micros, the ScanDone as a plain tuple or None)
    META = ReadModifyWriteStateSpec("meta", FastPrimitivesCoder())
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)

    def __init__(self, round_timeout_s: float, dedupe_horizon_s: float, horizon: float | None):
        self._timeout_us = int(round(round_timeout_s * US))
        self._dedupe_us = int(round(dedupe_horizon_s * US))
        self._horizon_us = int(round(horizon * US)) if horizon is not None else None

    def setup(self):
        self._late = Metrics.counter(_METRICS, "after_close")
        self._rounds = Metrics.counter(_METRICS, "rounds")
        self._timed_out = Metrics.counter(_METRICS, "timed_out_scans")

    def process(self, element, ts=beam.DoFn.TimestampParam, events=beam.DoFn.StateParam(EVENTS),
                meta=beam.DoFn.StateParam(META), close=beam.DoFn.TimerParam(CLOSE)):
        _, item = element
        current = meta.read()
        if current is not None and current[0] == _CLOSED:
            self._late.inc()  # a scan delivered again, or a response after its round closed
            return
        if isinstance(item, Done):
            if current is not None and current[2] is not None:
                return  # the same ScanDone again
            meta.write((_OPEN, current[1] if current else ts.micros, tuple(item)))
            # Close once the watermark passes the ScanDone: responses sent before it are all in.
            close.set(timer_time(ts.micros))
            return
        events.add(tuple(item))
        if current is None:
            meta.write((_OPEN, ts.micros, None))
            close.set(timer_time(ts.micros + self._timeout_us))

    @on_timer(CLOSE)
    def on_close(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 events=beam.DoFn.StateParam(EVENTS), meta=beam.DoFn.StateParam(META),
                 close=beam.DoFn.TimerParam(CLOSE)):
        """Emit the scan's rounds, one per IP, then remember the scan id for the dedupe horizon;
        the second firing (after the horizon) forgets it."""
        current = meta.read()
        if current is None:
            return
        if current[0] == _CLOSED:
            meta.clear()
            return
        done = Done(*current[2]) if current[2] is not None else None
        if done is None:
            self._timed_out.inc()
        # A timed-out round ends at its deadline (the timer itself fires on a whole millisecond).
        ended_us = current[1] + self._timeout_us
        for rnd in assemble(key, (Event(*e) for e in events.read()), done, ended_us):
            self._rounds.inc()
            yield rnd.ip, rnd
        events.clear()
        forget = fired.micros + self._dedupe_us
        if self._horizon_us is not None and forget >= self._horizon_us:
            meta.clear()  # a bounded replay ends before the horizon: nothing to remember past it
            return
        meta.write((_CLOSED, current[1], None))
        close.set(timer_time(forget))


class AssembleRounds(beam.PTransform):
    """:class:`~pipelines.glue.Event` / :class:`~pipelines.glue.Done` -> ``(ip, Round)``.

    One round per (ip, scan id): every IP that answered, plus the target of a single-address scan
    that answered nothing (its silence). ``horizon`` is for bounded replays: nothing is kept for
    after it.
    """

    def __init__(self, round_timeout_s: float, dedupe_horizon_s: float, horizon: float | None = None):
        super().__init__()
        self._fn = _AssembleFn(round_timeout_s, dedupe_horizon_s, horizon)

    def expand(self, items):
        return (items
                | "KeyByScan" >> beam.Map(lambda item: (item.scan_id, item)).with_output_types(
                    beam.typehints.KV[str, Any])
                | "GatherScan" >> beam.ParDo(self._fn))
