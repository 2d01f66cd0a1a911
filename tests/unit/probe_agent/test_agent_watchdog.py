"""The command loop's watchdog (probe_agent/watchdog.py): fires once when the loop stops turning."""

from __future__ import annotations

import threading

import pytest

from probe_agent.watchdog import LoopWatchdog, overdue


def test_overdue_only_from_the_limit_on():
    assert overdue(100.0, 159.9, 60.0) is None
    assert overdue(100.0, 160.0, 60.0) == 60.0
    assert overdue(100.0, 400.0, 60.0) == 300.0


def test_a_limit_of_zero_is_refused():
    with pytest.raises(ValueError, match="above 0"):
        LoopWatchdog(0, lambda s: None)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_it_fires_once_when_the_loop_stops_turning_and_never_while_it_turns():
    clock, fired, done = FakeClock(), [], threading.Event()

    def on_stuck(seconds):
        fired.append(seconds)
        done.set()

    dog = LoopWatchdog(10.0, on_stuck, check_s=0.01, clock=clock).start()
    try:
        for _ in range(50):                       # the loop turns every 5 (fake) seconds: never stuck
            clock.now += 5.0
            dog.turn()
            threading.Event().wait(0.005)
        assert not fired and not dog.fired
        clock.now += 12.0                         # then it stops turning
        assert done.wait(5), "the watchdog did not fire"
        threading.Event().wait(0.05)
        clock.now += 100.0
        threading.Event().wait(0.05)
    finally:
        dog.stop()
    assert fired == [12.0] and dog.fired


def test_a_stopped_watchdog_does_not_fire():
    clock, fired = FakeClock(), []
    dog = LoopWatchdog(1.0, fired.append, check_s=0.01, clock=clock).start()
    dog.stop()
    clock.now += 100.0
    threading.Event().wait(0.05)
    assert not fired
