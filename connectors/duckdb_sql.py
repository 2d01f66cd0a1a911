"""SQL pieces the DuckDB catalog modules share: filter bounds as times, WHERE clauses, quoting.

:func:`as_time` reads a time bound (``datetime``, ISO text or epoch seconds) as an aware UTC
datetime; :func:`sql_filters` makes the ``policy``/``start``/``end`` WHERE clause of the canned
queries; :func:`sql_quote` escapes text for a SQL string literal.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def as_time(value: Any) -> _dt.datetime | None:
    """A filter bound as an aware UTC datetime: ``datetime`` (naive = UTC), ISO text, epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc)
    if isinstance(value, (int, float)):
        return EPOCH + _dt.timedelta(seconds=float(value))
    try:
        return as_time(_dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        try:
            return as_time(float(value))
        except ValueError:
            raise ValueError(f"{value!r} is not a time; write ISO 8601 (2019-12-02T00:00Z) or epoch seconds") from None


def sql_filters(column: str | None, policy: str | None, start: Any, end: Any) -> tuple[str, list]:
    """The WHERE clause and its parameters for ``policy`` and the window ``[start, end)`` on ``column``."""
    clauses, params = ["true"], []
    if policy is not None:
        clauses.append("policy = ?")
        params.append(policy.upper())
    if column is not None and as_time(start) is not None:
        clauses.append(f"{column} >= ?")
        params.append(as_time(start))
    if column is not None and as_time(end) is not None:
        clauses.append(f"{column} < ?")
        params.append(as_time(end))
    return " AND ".join(clauses), params


def sql_quote(text: str) -> str:
    """``text`` with its single quotes doubled, for a SQL string literal."""
    return str(text).replace("'", "''")
