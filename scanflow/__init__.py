"""scanflow: continuous national-scale IoT scanning with a few percent of an exhaustive scan's traffic.

This package is the pure core (policy, knowledge base, estimation, metrics, world model) and the CLI.
It imports nothing from Beam, Kafka or the network; I/O lives in ``connectors``, ``pipelines`` and
``probe_agent``.
"""

__version__ = "0.1.0"
