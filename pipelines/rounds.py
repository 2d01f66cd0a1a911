"""Stage: scan-round assembly. Events of one scan are gathered until its ScanDone (or a timeout).

Keyed by **scan id**, not by IP: a sweep is one scan of a whole CIDR block whose single ScanDone
(keyed by the block) closes the rounds of every address that answered in it; a per-IP key would
never see that ScanDone. Grouping by IP happens when the scan closes, so the output is still one
round per (ip, scan id) (:func:`scanflow.lifecycle.rounds.assemble`).

Time: a round closes when the watermark passes its ScanDone's element time (so every response sent
before the ScanDone is in, whatever partition it came through), or ``round_timeout_s`` after its
last response when the ScanDone never comes (the agent died): then it is ``TIMED_OUT``, which the
policy treats as not complete. A range scan (a sweep) does not wait for its ScanDone: each address
that answers it is gathered on its own and closed ``sweep_gather_s`` after its last answer
(``TIMED_OUT``: the sweep was not over for it), whenever in the sweep that is, so a late answer
promotes its address as an early one does. A closed scan id is remembered for ``dedupe_horizon_s``: a round
delivered again (agent retry, replay overlap) is not assembled twice.

Cost: the responses of a scan that arrive in one bundle are sent on together; each such batch only
appends to state and sets timers, nothing is read per element (on a portable runner every state read
is a round trip to the runner). State is read once, when a timer fires.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.beam_workarounds import decline_nan_splits, lighten_state_cache_weigher
from scanflow.lifecycle.rounds import (RANGE_KEY_SEP, US, Done, Event, Round, assemble, complete_in,
                                       is_range_scan, range_key, scan_of_key)
from pipelines.decode import timer_time

_METRICS = "scanflow.rounds"
#: Output of the bundle step: rounds complete within one bundle, keyed by IP.
COMPLETE_ROUNDS = "complete"


class _AssembleFn(beam.DoFn):
    """Per scan id: a bag of responses, the ScanDone when it came, a closed mark; two timers."""

    EVENTS = BagStateSpec("events", FastPrimitivesCoder())
    DONE = ReadModifyWriteStateSpec("done", FastPrimitivesCoder())
    CLOSED = ReadModifyWriteStateSpec("closed", FastPrimitivesCoder())
    #: The ScanDone's time; after the round closed, the end of the dedupe horizon.
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)
    #: ``round_timeout_s`` after the latest response: the agent died if no ScanDone came by then.
    TIMEOUT = TimerSpec("timeout", TimeDomain.WATERMARK)

    def __init__(self, round_timeout_s: float, dedupe_horizon_s: float, horizon: float | None,
                 sweep_gather_s: float | None = None):
        self._timeout_us = int(round(round_timeout_s * US))
        gather = round_timeout_s if sweep_gather_s is None else sweep_gather_s
        self._gather_us = int(round(gather * US))
        self._dedupe_us = int(round(dedupe_horizon_s * US))
        self._horizon_us = int(round(horizon * US)) if horizon is not None else None

    def setup(self):
        lighten_state_cache_weigher()
        decline_nan_splits()
        self._late = Metrics.counter(_METRICS, "after_close")
        self._rounds = Metrics.counter(_METRICS, "rounds")
        self._timed_out = Metrics.counter(_METRICS, "timed_out_scans")
        self._stale = Metrics.counter(_METRICS, "stale_rounds")

    def _wait_us(self, key: str) -> int:
        """How long after its last response a round without ScanDone closes: an address's answers to
        a range scan after ``sweep_gather_s``, any other scan after ``round_timeout_s``."""
        return self._gather_us if RANGE_KEY_SEP in key else self._timeout_us

    def process(self, element, events=beam.DoFn.StateParam(EVENTS), done=beam.DoFn.StateParam(DONE),
                closed=beam.DoFn.StateParam(CLOSED), close=beam.DoFn.TimerParam(CLOSE),
                timeout=beam.DoFn.TimerParam(TIMEOUT)):
        key, batch = element
        latest, has_done = None, False
        current = None
        for us, fields, is_done in batch:
            if is_done:
                # A scan executed twice (its agent died before acknowledging the command, another
                # ran it again) reports the same scan id with a later end: the round keeps the
                # earliest ScanDone, so every run of this stage, whichever ScanDones it saw, closes
                # the round at the same time and decides it the same way. Close once the watermark
                # passes it: every response sent before it is in by then. (State is read only here,
                # once per ScanDone, never per response.)
                if current is None:
                    if closed.read():
                        self._late.inc()
                        has_done = True
                        continue
                    current = done.read() or ()
                if current and Done(*current).ended_us <= Done(*fields).ended_us:
                    has_done = True
                    continue
                done.write(fields)
                current = fields
                close.set(timer_time(us))
                has_done = True
            else:
                events.add(fields)
                latest = us if latest is None else max(latest, us)
        if latest is not None and not has_done:
            # Only a scan whose ScanDone has not come with its responses needs the timeout (timers
            # are what a runner charges most for, per element).
            timeout.set(timer_time(latest + self._wait_us(key)))

    @on_timer(CLOSE)
    def on_close(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 events=beam.DoFn.StateParam(EVENTS), done=beam.DoFn.StateParam(DONE),
                 closed=beam.DoFn.StateParam(CLOSED), close=beam.DoFn.TimerParam(CLOSE),
                 timeout=beam.DoFn.TimerParam(TIMEOUT)):
        """The ScanDone's time has passed: emit the scan's rounds, one per IP. When the scan was
        closed already (the dedupe horizon has passed, or its ScanDone came again), forget it."""
        if closed.read():
            self._forget(events, done, closed, timeout)
            return
        yield from self._close(key, fired.micros, events, done, closed, close, timeout)

    @on_timer(TIMEOUT)
    def on_timeout(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                   events=beam.DoFn.StateParam(EVENTS), done=beam.DoFn.StateParam(DONE),
                   closed=beam.DoFn.StateParam(CLOSED), close=beam.DoFn.TimerParam(CLOSE),
                   timeout=beam.DoFn.TimerParam(TIMEOUT)):
        """No response for ``round_timeout_s``: without a ScanDone the agent died, and the scan is
        closed as timed out; responses after a closed scan are dropped here."""
        if closed.read():
            dropped = sum(1 for _ in events.read())
            self._late.inc(dropped)  # responses after their round closed
            events.clear()
            return
        if done.read() is not None:
            return  # its ScanDone came: the close timer decides
        yield from self._close(key, fired.micros, events, done, closed, close, timeout)

    def _close(self, key, fired_us, events, done, closed, close, timeout):
        items = [Event(*e) for e in events.read()]
        raw = done.read()
        end = Done(*raw) if raw is not None else None
        if end is None:
            self._timed_out.inc()
        # A timed-out round ends at its deadline: the latest response + the timeout (the timer
        # itself fires on a whole millisecond).
        wait = self._wait_us(key)
        ended_us = max((e.ts_us for e in items), default=fired_us - wait) + wait
        for rnd in assemble(scan_of_key(key), items, end, ended_us):
            if rnd.ended_us < fired_us - self._dedupe_us:
                # A scan sent again long after it ended (its records re-stamped when re-sent):
                # older than anything this stage still remembers, so it may be applied already.
                self._stale.inc()
                continue
            self._rounds.inc()
            yield rnd.ip, rnd
        events.clear()
        done.clear()
        timeout.clear()
        forget = fired_us + self._dedupe_us
        if self._horizon_us is not None and forget >= self._horizon_us:
            return  # a bounded replay ends before the horizon: nothing to remember past it
        closed.write(1)
        close.set(timer_time(forget))

    @staticmethod
    def _forget(events, done, closed, timeout):
        events.clear()
        done.clear()
        closed.clear()
        timeout.clear()


class _GatherInBundle(beam.DoFn):
    """Responses of one scan that arrive in the same bundle go on together.

    A scan whose ScanDone came in the bundle with every response it announces (a single-address scan:
    the agent writes its responses and then its ScanDone to the target's partition, so they are
    usually consecutive records of one read) is complete: its round is assembled here and goes
    straight to the per-IP stage (output ``complete``), with no state and no timer at all. Any other
    batch goes to the keyed stage as one element: one state append and one timer per scan and bundle
    instead of per response.
    """

    def __init__(self, dedupe_horizon_s: float):
        self._dedupe_us = int(round(dedupe_horizon_s * US))

    def setup(self):
        self._in_bundle = Metrics.counter(_METRICS, "rounds_in_bundle")
        self._stale = Metrics.counter(_METRICS, "stale_rounds")

    def start_bundle(self):
        self._scans: dict = {}

    def process(self, item, ts=beam.DoFn.TimestampParam, win=beam.DoFn.WindowParam):
        self._scans.setdefault((item.scan_id, win), []).append((ts.micros, item))

    def finish_bundle(self):
        for (scan_id, win), batch in _by_address_in_ranges(self._scans):
            rnd = _complete_round(scan_id, batch)
            if rnd is not None:
                # Stamped as the keyed stage would emit it: at its close timer, the ScanDone's time.
                at = timer_time(rnd[0])
                if rnd[1].ended_us < at.micros - self._dedupe_us:
                    self._stale.inc()   # as in the keyed stage's close: older than it remembers
                    continue
                self._in_bundle.inc()
                yield TaggedOutput(COMPLETE_ROUNDS, WindowedValue((rnd[1].ip, rnd[1]), at, [win]))
                continue
            # The earliest element time of the batch: none of its items is later than it may be.
            yield WindowedValue((scan_id, [(us, tuple(it), isinstance(it, Done)) for us, it in batch]),
                                Timestamp(micros=min(us for us, _ in batch)), [win])
        self._scans = {}


def _by_address_in_ranges(scans: dict):
    """The bundle's batches, a range scan's (a sweep's) split by answering address.

    A sweep of a national block runs for hours; its ScanDone comes at the end, and an address that
    answered at the start must not wait for it, nor be lost when the sweep's answers pause for longer
    than the round timeout. So each address's answers to a range scan are gathered on their own
    (key :func:`~scanflow.lifecycle.rounds.range_key`) and closed ``sweep_gather_s`` after its last answer,
    whenever that is: the address is promoted to per-IP tracking then. The range's ScanDone closes
    nothing (it has no address of its own) and is not kept.
    """
    for (scan_id, win), batch in scans.items():
        if not is_range_scan(scan_id):
            yield (scan_id, win), batch
            continue
        by_ip: dict[str, list] = {}
        for us, item in batch:
            if not isinstance(item, Done):
                by_ip.setdefault(item.ip, []).append((us, item))
        for ip in sorted(by_ip):
            yield (range_key(scan_id, ip), win), by_ip[ip]


def _complete_round(scan_id: str, batch) -> tuple[int, Round] | None:
    """(the ScanDone's element time, the round) when ``batch`` is one whole single-address scan."""
    dones = [(us, it) for us, it in batch if isinstance(it, Done)]
    if len(dones) != 1:
        return None
    done_us, done = dones[0]
    events = [it for _, it in batch if not isinstance(it, Done)]
    if not complete_in(done, events):
        return None
    rounds = assemble(scan_id, events, done, done.ended_us)
    return (done_us, rounds[0]) if len(rounds) == 1 else None


class AssembleRounds(beam.PTransform):
    """:class:`~scanflow.lifecycle.rounds.Event` / :class:`~scanflow.lifecycle.rounds.Done` -> ``(ip, Round)``.

    One round per (ip, scan id): every IP that answered, plus the target of a single-address scan
    that answered nothing (its silence). ``horizon`` is for bounded replays: nothing is kept for
    after it.
    """

    def __init__(self, round_timeout_s: float, dedupe_horizon_s: float, horizon: float | None = None,
                 sweep_gather_s: float | None = None):
        super().__init__()
        self._dedupe_s = dedupe_horizon_s
        self._fn = _AssembleFn(round_timeout_s, dedupe_horizon_s, horizon, sweep_gather_s)

    def expand(self, items):
        gathered = items | "KeyByScan" >> beam.ParDo(_GatherInBundle(self._dedupe_s)).with_outputs(
            COMPLETE_ROUNDS, main="scans")
        scans = gathered.scans | "AsKV" >> beam.Map(lambda kv: kv).with_output_types(beam.typehints.KV[str, Any])
        assembled = scans | "GatherScan" >> beam.ParDo(self._fn)
        return (assembled, gathered[COMPLETE_ROUNDS]) | "AllRounds" >> beam.Flatten()
