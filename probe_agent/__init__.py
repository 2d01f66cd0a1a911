"""The probe agent: consumes scan commands, probes safely and rate-limited, publishes events.

Public API:

- :class:`probe_agent.settings.AgentSettings` - every setting, validated (``[agent]``);
- :class:`probe_agent.core.Agent` - ``await agent.run()`` (consumer group) or
  ``await agent.execute(command)`` (one command);
- :mod:`probe_agent.backends` - the backend interface and registry (``connect``, ``masscan``, ``sim``).

The safety model, the backends and the delivery guarantees are described in docs/AGENT.md.
"""
