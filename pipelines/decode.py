"""Decoding the event topic for the scheduler: record times checked, records made into rounds' parts.

:func:`from_record` turns a decoded ``ScanEvent`` / ``ScanDone`` into the lifecycle's
:class:`~scanflow.lifecycle.rounds.Event` / :class:`~scanflow.lifecycle.rounds.Done`, refusing a
record whose times are absurd (:class:`InvalidTime`, an ``InvalidRecord`` that goes to the dead-letter
topic); :func:`timer_time` is the Beam timestamp of a time in microseconds.
"""

from __future__ import annotations

from typing import Any, Mapping

from connectors.avro_codec import InvalidRecord
from scanflow.lifecycle.rounds import US, Done, Event, port_set_ref

#: Record times the scheduler accepts: [2000-01-01, 2100-01-01) UTC, in microseconds. A time outside
#: is absurd (a broken clock, a unit mix-up, a hostile record) and would make the scheduler act on
#: it: a round that "ended" in 1970 is followed by every scan, command and watchdog of the half
#: century since (tens of thousands of expired commands), one from the far future parks the IP past
#: the end of Beam's timers.
MIN_TIME_US = 946_684_800 * US
MAX_TIME_US = 4_102_444_800 * US
#: The time fields of the records the scheduler reads.
TIME_FIELDS = {"ScanEvent": ("timestamp",), "ScanDone": ("started_at", "ended_at"),
               "IpState": ("updated_at", "next_scan_at", "first_seen_at", "last_seen_at", "last_scanned_at",
                           "last_changed_at")}


class InvalidTime(InvalidRecord):
    """A record time outside [:data:`MIN_TIME_US`, :data:`MAX_TIME_US`)."""

    error_class = "InvalidTimestamp"


def check_time(us: Any, field: str) -> None:
    """:class:`InvalidTime` unless ``us`` is None or microseconds within the accepted range."""
    if us is None:
        return
    if not isinstance(us, (int, float)) or us != us or not MIN_TIME_US <= us < MAX_TIME_US:
        raise InvalidTime(f"{field} {us!r} is not a time between 2000-01-01 and 2100-01-01 "
                          "(microseconds since the epoch)")


def check_times(schema: str, record: Mapping[str, Any]) -> None:
    """:class:`InvalidTime` when a time field of ``record`` is absurd (see :data:`MIN_TIME_US`)."""
    for field in TIME_FIELDS.get(schema, ()):
        check_time(record.get(field), field)


def timer_time(us: int):
    """The Beam timestamp to set an event-time timer for time ``us``: rounded *up* to a whole
    millisecond, because runners keep timers in milliseconds (a timer set between two milliseconds
    would fire before its time, and a due time checked against the firing time would never be
    reached)."""
    from apache_beam.utils.timestamp import Timestamp

    return Timestamp(micros=-(-us // 1000) * 1000)

def from_record(schema: str, record: Mapping[str, Any]) -> Event | Done | None:
    """A decoded ``ScanEvent`` or ``ScanDone`` as an :class:`Event` / :class:`Done`.

    Returns None for what the scheduler does not use: responses over a transport other than TCP
    (the policy's ports are TCP ports) and other schemas. Raises :class:`InvalidTime` (an
    ``InvalidRecord``) for a record whose times are absurd.
    """
    check_times(schema, record)
    if schema == "ScanEvent":
        if record.get("transport") not in ("TCP", "UNKNOWN", None):
            return None
        banner = record.get("banner") if record.get("kind") == "BANNER" else None
        return Event(record["scan_id"], record["ip"], int(record["port"]), banner,
                     record.get("banner_protocol"), int(record["timestamp"]), record.get("agent_id") or "")
    if schema == "ScanDone":
        return Done(record["scan_id"], record["target"], record.get("agent_id") or "", record.get("command_id"),
                    record.get("policy") or "UNKNOWN", int(record["started_at"]), int(record["ended_at"]),
                    port_set_ref(record.get("port_set")), int(record.get("ports_probed") or 0),
                    record.get("status") or "UNKNOWN", _count(record.get("responses")))
    return None


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int) and value >= 0 else -1
