"""Work-arounds for Beam worker behaviour (pipelines/beam_workarounds.py)."""

from __future__ import annotations

import math

import pytest
from apache_beam.runners.worker import bundle_processor

from pipelines.beam_workarounds import decline_nan_splits


def test_a_nan_split_request_is_declined_instead_of_failing_the_bundle():
    compute = bundle_processor.DataInputOperation._compute_split
    if not getattr(compute, "_scanflow_guard", False):
        with pytest.raises(ValueError, match="NaN"):  # Beam's own behaviour, the failure seen in the soak
            compute(3, math.nan, 10, 0.5, 10)
    assert decline_nan_splits() is True
    assert decline_nan_splits() is True  # idempotent
    guarded = bundle_processor.DataInputOperation._compute_split
    assert guarded(3, math.nan, 10, 0.5, 10) is None
    assert guarded(3, 0.5, 10, math.nan, 10) is None
    assert guarded(3, 0.5, 10, math.inf, 10) is None
    # a finite request is split exactly as before: half of the remainder kept
    assert guarded(0, 0.0, 10, 0.5, 10)[-1] == compute(0, 0.0, 10, 0.5, 10)[-1] == 5
