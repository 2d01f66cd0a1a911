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


def decline_nan_splits() -> bool:
    """Make the SDK worker decline a split request whose progress or fraction is not a finite number.

    In a long live run on Prism the scheduler's worker received a split request for which Beam's
    ``DataInputOperation._compute_split`` computed with NaN and raised ``ValueError: cannot convert
    float NaN to integer`` from ``int(round(...))``, which failed the bundle and so the whole job (seen
    after ~5 minutes of the soak, docs/RELIABILITY.md). Declining a split is always safe: the runner
    keeps the bundle whole, exactly as when an SDF refuses to split. Finite requests are untouched.
    Idempotent; applied from the stateful DoFns' ``setup`` like :func:`lighten_state_cache_weigher`.
    """
    import math

    try:
        from apache_beam.runners.worker import bundle_processor
        operation = bundle_processor.DataInputOperation
        original = operation.__dict__["_compute_split"].__func__
    except (ImportError, AttributeError, KeyError):
        log.warning("Beam's DataInputOperation is not as expected; NaN split requests are not guarded")
        return False
    if getattr(original, "_scanflow_guard", False):
        return True

    def _compute_split(index, current_element_progress, stop, fraction_of_remainder, total_buffer_size,
                       allowed_split_points=(), try_split=lambda fraction: None):
        if not (math.isfinite(current_element_progress) and math.isfinite(fraction_of_remainder)):
            log.warning("declined a split request with progress %r and fraction %r",
                        current_element_progress, fraction_of_remainder)
            return None
        return original(index, current_element_progress, stop, fraction_of_remainder, total_buffer_size,
                        allowed_split_points, try_split)

    _compute_split._scanflow_guard = True  # type: ignore[attr-defined]
    operation._compute_split = staticmethod(_compute_split)
    return True
