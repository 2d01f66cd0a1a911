"""The separate pipeline + agent path as docs/OPERATIONS.md walks it: ``scanflow pipeline run`` and
``scanflow agent`` as two commands sharing nothing but the broker and the machine's state directory.

The scheduler (``pipeline.first_pass`` on, a sweep range) publishes its named port sets to
``<infra.state_dir>/portsets`` when it starts; the agent, with no ``agent.portset_dir`` set, reads them
there. Before, the pipeline never published them and every sweep was refused with
``port set provisional-silent@v1 is not published (agent.portset_dir is not set)``. The agent is the
sim backend (virtual time, nothing leaves the machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from scanflow.config import REPO_ROOT
from tests.integration.netns import read_records

WORLD = "10.0.0.0/24"


def test_the_scheduler_publishes_its_port_sets_where_a_separate_agent_finds_them(kafka, make_topic, prism_server,
                                                                                 tmp_path):
    topics = {"events": make_topic("path-events", partitions=3), "commands": make_topic("path-commands", partitions=1),
              "ip_state": make_topic("path-state", partitions=3, **{"cleanup.policy": "compact"}),
              "dead_letter": make_topic("path-dead", partitions=1)}
    common = [sys.executable, "-m", "scanflow", "--set", f"infra.state_dir={tmp_path / 'state'}"]
    for key, name in topics.items():
        common += ["--set", f"topics.{key}={name}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANFLOW_PIPELINE_", "SCANFLOW_AGENT_"))}
    start = time.time()
    scheduler = subprocess.Popen(
        common + ["--set", f"pipeline.sweep_ranges={WORLD}", "--set", "pipeline.first_pass=true",
                  "--set", "pipeline.sweep_gather_s=2", "--set", "pipeline.sweep_tick_s=1",
                  "--set", f"pipeline.group_id=path-{uuid.uuid4().hex[:8]}",
                  "pipeline", "run", "--job-endpoint", prism_server.ensure_running().endpoint, "--duration", "60"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    agent = subprocess.Popen(
        common + ["agent", "--backend", "sim", "--allow", WORLD, "--group", f"path-agents-{uuid.uuid4().hex[:8]}",
                  "--agent-id", "sim-agent", "--no-progress", "--rate", "100000", "--per-target-rate", "1000",
                  "--set", "sim_n_ips=256", "--set", "sim_seed=3", "--set", f"sim_epoch_us={int(start) * 1_000_000}",
                  "--set", "commit_interval_s=0.2"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def first_pass_done(out):
            return any(d.schema == "ScanDone" and d.record["target"] == WORLD for _, d in out)

        events = [d for _, d in read_records(kafka, topics["events"], first_pass_done, timeout_s=120)]
    finally:
        for proc in (agent, scheduler):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        agent_out, _ = agent.communicate(timeout=60)
        scheduler_out, _ = scheduler.communicate(timeout=120)
    published = sorted(p.name for p in (tmp_path / "state" / "portsets").iterdir())
    assert "provisional-standard-v1.json" in published, scheduler_out[-2000:]
    done = [d.record for d in events if d.schema == "ScanDone" and d.record["target"] == WORLD]
    assert done, f"no ScanDone of the first pass\nagent:\n{agent_out[-2000:]}\nscheduler:\n{scheduler_out[-2000:]}"
    # The first pass ran (not refused for an unknown port set), with the scheduler's initial set.
    assert done[0]["status"] == "COMPLETE", done[0]
    # (on the provisional sets the default, adaptive, policy's first pass is the whole standard set)
    assert done[0]["port_set"]["name"] == "provisional-standard" and done[0]["addresses_probed"] == 256
    dead = read_records(kafka, topics["dead_letter"], lambda out: False, timeout_s=2)
    assert not dead, dead
