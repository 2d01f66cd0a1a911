"""The whole loop on one machine (``scanflow run``): broker topics, the scheduler on Prism, agents,
the lake, a summary and a report. See :mod:`scanflow.loop.orchestrate`."""
