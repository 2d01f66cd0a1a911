"""The terminal summary of a run (:func:`scanflow.loop.summary.format_summary`)."""

from __future__ import annotations

from pathlib import Path

from scanflow.loop.progress import Progress
from scanflow.loop.spec import LoopSpec
from scanflow.loop.summary import LoopResult, format_summary


def test_the_back_off_lines_say_the_interval_is_the_time_to_the_next_probe():
    # under the adaptive policy every step's next probe is the light one, 12 h on: the line must not
    # read as if the back-off step's own interval were 0.5 d
    spec = LoopSpec(run_dir=Path("run"), lake_dir=Path("run/lake"), report_dir=Path("run/report"), run_id="r1")
    summary = {"tables": {"decisions": 5}, "responsive_ips": 3, "open_ports": 4, "tracked_ips": 3,
               "backoff": [{"step": 0, "interval_days": 0.5, "ips": 1}, {"step": 5, "interval_days": 0.5, "ips": 2}]}
    lines = format_summary(LoopResult("r1", 10.0, 8.0, Progress(7.0, 10, 5, 20), {}, summary), spec)
    assert "  back-off (latest step of each responsive IP; median time to its next probe):" in lines
    assert "    step 5  next probe after ~0.5 d  2 IPs" in lines
    assert lines[0].startswith("summary of run r1 (sim, 20,000 IPs, 7.00 virtual days in 8 s")
