"""The policy core imports nothing from Beam, Kafka or the network, and never opens a socket.

Checked in fresh interpreters so nothing imported by other tests can hide a dependency. What is
honest to claim: importing the core modules loads no ``socket``, ``ssl``, HTTP or URL-fetching
module at all. A port-set derivation imports DuckDB, and DuckDB's import pulls in the standard
``email.utils`` module, which imports ``socket`` (for ``getfqdn``) without using it; so for the
derivation we check that no network *client* module is loaded and that no socket is ever created,
by replacing ``socket.socket`` with a tripwire before running everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CORE = ["scanflow.fingerprint", "scanflow.knowledge", "scanflow.estimate", "scanflow.policy",
        "scanflow.metrics", "scanflow.budget", "scanflow.portsets", "scanflow.world", "scanflow.simulate",
        "scanflow.lifecycle.step", "scanflow.lifecycle.rounds", "scanflow.lifecycle.state", "scanflow.lifecycle.records"]
NEVER = ["apache_beam", "kafka", "confluent_kafka", "http.client", "urllib.request", "ssl", "requests",
         "connectors", "pipelines", "probe_agent"]


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_core_loads_no_network_beam_or_kafka_module():
    loaded = _run(f"""
        import json, sys
        for name in {CORE!r}:
            __import__(name)
        print(json.dumps(sorted(sys.modules)))
    """)
    for name in NEVER + ["socket", "duckdb"]:
        assert not any(m == name or m.startswith(name + ".") for m in loaded), name


def test_the_whole_core_runs_without_ever_creating_a_socket():
    result = _run(f"""
        import json, socket, sys

        class Tripwire(socket.socket):
            def __init__(self, *a, **k):
                raise AssertionError("the core tried to open a socket")

        socket.socket = Tripwire
        socket.create_connection = lambda *a, **k: Tripwire()
        import pyarrow as pa
        from scanflow.budget import compute_budget
        from scanflow.estimate import Estimator
        from scanflow.knowledge import load_knowledge
        from scanflow.policy import EfficientPolicy, Observation, PolicyPortSets
        from scanflow.portsets import derive_port_sets
        from scanflow.metrics import PolicyTally

        kb = load_knowledge()
        d = derive_port_sets(pa.table({{"ip": ["a", "a", "b"], "port": [80, 443, 80]}}),
                             device_ports=kb.device_ports(), malware_ports=kb.malware_ports())
        policy = EfficientPolicy(PolicyPortSets(d.standard, d.silent, d.unknown), Estimator(kb))
        state, plan = policy.decide(None, Observation.of([80], {{80: b"Server: Hikvision-Webs"}}), 0.0)
        PolicyTally().add_round("a", 10, [80])
        assert compute_budget().efficient_total == 63341198
        print(json.dumps({{"device": state.device, "modules": sorted(sys.modules)}}))
    """)
    assert result["device"] == "hikvision-ipc"
    for name in NEVER:
        assert not any(m == name or m.startswith(name + ".") for m in result["modules"]), name
