"""The scheduler's last line says how its job ended: the job service answers a cancel while the job
is still CANCELLING, so the state is read until it is terminal (bounded)."""

from pipelines.runners import final_state


class _Result:
    """A job result whose state goes through ``states`` one read at a time, then stays at the last."""

    def __init__(self, *states):
        self.states = list(states)
        self.reads = 0

    @property
    def state(self):
        self.reads += 1
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


class _Gone:
    @property
    def state(self):
        raise ConnectionError("job server gone")


def test_a_cancel_still_in_flight_is_waited_for_until_the_job_is_cancelled():
    r = _Result("CANCELLING", "CANCELLING", "PipelineState.CANCELLED")
    assert final_state(r, timeout_s=5, poll_s=0) == "CANCELLED"
    assert r.reads == 3


def test_a_state_that_never_ends_is_reported_as_it_is_after_the_timeout():
    assert final_state(_Result("CANCELLING"), timeout_s=0.05, poll_s=0.01) == "CANCELLING"


def test_a_job_server_already_gone_is_not_an_error():
    assert final_state(_Gone(), timeout_s=1, poll_s=0) == "UNKNOWN"


def test_stopped_is_not_an_end_beam_reports_it_before_a_job_starts():
    r = _Result("STOPPED", "RUNNING", "CANCELLING", "CANCELLED")
    assert final_state(r, timeout_s=5, poll_s=0) == "CANCELLED"
