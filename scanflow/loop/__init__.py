"""The whole loop on one machine (``scanflow run``): broker topics, the scheduler on Prism, agents,
the lake, a summary and a report. The outline is :mod:`scanflow.loop.orchestrate`; what a run does
is :mod:`~scanflow.loop.spec`, its Kafka topics and groups :mod:`~scanflow.loop.topics`, what it
starts :mod:`~scanflow.loop.launch`, its child processes :mod:`~scanflow.loop.processes`, its
progress line :mod:`~scanflow.loop.progress`, its summary :mod:`~scanflow.loop.summary`."""
