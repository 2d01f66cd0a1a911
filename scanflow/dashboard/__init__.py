"""The dashboard of ``scanflow serve``: what a lake's scans found, what is exposed, how efficient the
scan was, and (while ``scanflow run`` writes the lake) how the run is doing. Read-only: GET only,
127.0.0.1 by default, every value from the lake escaped (Jinja2 autoescaping, banners through
:func:`connectors.report.cell_text`), no script on any page. See :mod:`scanflow.dashboard.app`.
"""
