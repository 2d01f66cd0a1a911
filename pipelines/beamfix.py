"""A work-around for Apache Beam (2.77) behaviour that otherwise costs the scheduler most of its time.

Beam's SDK worker keeps user state in a cache weighed by ``objsize.get_deep_size``, which by default
first collects the ids of every loaded module's globals (so that shared objects are not counted):
0.3 to 1.2 ms per call in a process with Beam, Kafka and pyarrow loaded, paid on every state read and
write. A profile of the bounded replay showed 85 % of its time there. The scheduler's state values are
bytes and tuples of primitives that never reference module globals, so the walk buys nothing: with it
skipped the weights are the same and the call takes ~20 µs.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def lighten_state_cache_weigher() -> bool:
    """Make Beam's state cache weigh values without walking every module's globals.

    Idempotent, and applied from the stateful DoFns' ``setup`` so that it takes effect in whichever
    process runs the worker (in-process for the FnApiRunner and LOOPBACK, a container elsewhere).
    Returns False (and changes nothing) when Beam's internals are not as expected.
    """
    try:
        import objsize
        from apache_beam.runners.worker import statecache

        current = statecache.get_deep_size
        if getattr(current, "_scanflow_light", False):
            return True
        size, referents, keep = statecache._size_func, statecache._get_referents_func, statecache._filter_func
    except (ImportError, AttributeError):
        log.warning("Beam's state cache is not as expected; its weigher stays as it is")
        return False

    def get_deep_size(*objs):
        return objsize.get_deep_size(*objs, get_size_func=size, get_referents_func=referents, filter_func=keep,
                                     exclude_modules_globals=False)

    get_deep_size._scanflow_light = True  # type: ignore[attr-defined]
    statecache.get_deep_size = get_deep_size
    return True
