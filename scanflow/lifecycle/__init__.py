"""One IP's lifecycle: the per-IP step every runner calls (pure; no Beam, Kafka or I/O).

- :mod:`~scanflow.lifecycle.rounds`: events and scan ends -> :class:`~scanflow.lifecycle.rounds.Round`
  (what one address said in one scan) -> the policy's :class:`~scanflow.policy.Observation`;
- :mod:`~scanflow.lifecycle.state`: :class:`~scanflow.lifecycle.state.Tracked`, a tracked IP's state
  (the policy's ``IpState`` plus its next scan and the scan ids it applied) and its compact bytes;
- :mod:`~scanflow.lifecycle.step`: :class:`~scanflow.lifecycle.step.Lifecycle`, the step itself: given
  an IP's state and what happens next (completed rounds, a due time, a restored state) it returns the
  new state and what follows (decisions, commands due, a state snapshot or tombstone);
- :mod:`~scanflow.lifecycle.records`: the Decision / Observation / ScanCommand / IpState records the
  step's outputs become, with one id formula each.

The live Beam per-IP stage (``pipelines.per_ip_stage``) and the batch decision stage
(``pipelines.decide_batch``) are drivers of :class:`~scanflow.lifecycle.step.Lifecycle`.
"""
