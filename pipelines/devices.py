"""Stage: device estimation of each round's answer, and its archive record.

Every round gets the fingerprint of its answer (open ports and normalised banner digests) and the
device model the knowledge base estimates from it (:class:`scanflow.estimate.Estimator`, the same
estimator the policy uses), written into the ``Observation`` record the archive keeps. The policy
re-estimates inside ``decide`` only when an answer changed; this stage labels every observation, so
the archive says what each round looked like.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from scanflow.fingerprint import answer_fingerprint

from scanflow.lifecycle.records import observation_record

OBSERVATIONS = "observations"


class _EstimateFn(beam.DoFn):
    def __init__(self, estimator, archive: bool):
        self._estimator = estimator
        self._archive = archive

    def setup(self):
        self._estimated = Metrics.counter("scanflow.devices", "estimated_rounds")

    def process(self, element):
        ip, rnd = element
        yield element
        if not self._archive:
            return
        fingerprint = device = None
        if rnd.responses:
            banners = [(p, b) for p, b, _ in rnd.responses if b is not None]
            ports = [p for p, _, _ in rnd.responses]
            fingerprint = answer_fingerprint(ports, banners)
            device = self._estimator.estimate(ports, banners).model
            if device is not None:
                self._estimated.inc()
        yield beam.pvalue.TaggedOutput(OBSERVATIONS, observation_record(rnd, fingerprint=fingerprint,
                                                                        device=device))


class EstimateDevices(beam.PTransform):
    """``(ip, Round)`` -> the same rounds (main output) and, with ``archive``, their ``Observation``
    records with fingerprint and estimated device (output ``observations``)."""

    def __init__(self, estimator, archive: bool = True):
        super().__init__()
        self._fn = _EstimateFn(estimator, archive)

    def expand(self, rounds):
        out = rounds | "Estimate" >> beam.ParDo(self._fn).with_outputs(OBSERVATIONS, main="rounds")
        return out.rounds, out[OBSERVATIONS]
