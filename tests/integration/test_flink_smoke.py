"""The Flink path: options and, when the job server jar is there, a real pipeline on Flink.

The pipeline test needs Beam's Flink job server jar for the installed Beam version
(``infra/flink/fetch.sh``) and Java; it starts the job server with an embedded Flink mini-cluster
(``--flink_master=[local]``) and LOOPBACK Python workers. It skips, saying so, when the jar is absent.
docs/RUNNERS.md records what happened when the jar was fetched on the build machine.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import apache_beam as beam
import pytest

from pipelines.runners import PRISM_JOB_ID, flink_job_server_jar, pipeline_options
from scanflow.config import BeamSettings, ConfigError


class _WriteLines(beam.DoFn):
    """Each bundle's elements as one JSON-lines file in ``directory`` (LOOPBACK: same process)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def start_bundle(self) -> None:
        self._rows: list[str] = []

    def process(self, element) -> None:
        self._rows.append(json.dumps(element))

    def finish_bundle(self) -> None:
        if self._rows:
            Path(self.directory, f"out-{uuid.uuid4().hex}.jsonl").write_text("\n".join(self._rows) + "\n")


def test_flink_options_need_the_job_server_jar(tmp_path):
    missing = BeamSettings(flink_job_server_jar=str(tmp_path / "absent.jar"))
    with pytest.raises(ConfigError, match="infra/flink/fetch.sh"):
        pipeline_options(missing, streaming=False, runner="flink")


def test_flink_options_pass_the_local_jar_so_beam_does_not_download_it(tmp_path):
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"")
    options = pipeline_options(BeamSettings(flink_job_server_jar=str(jar)), streaming=True, runner="flink")
    args = options.get_all_options()
    assert args["runner"] == "FlinkRunner"
    assert args["flink_job_server_jar"] == str(jar)
    assert args["flink_master"] == "[local]"
    assert args["environment_type"] == "LOOPBACK"
    assert args["streaming"] is True


@pytest.mark.slow
def test_bounded_pipeline_on_flink(settings, tmp_path):
    try:
        flink_job_server_jar(settings)
    except ConfigError as exc:
        pytest.skip(f"Flink job server jar absent ({exc})")
    from apache_beam.runners.portability.portable_runner import PipelineResult as PortableResult

    options = pipeline_options(settings, streaming=False, runner="flink", extra=["--parallelism=1"])
    pipeline = beam.Pipeline(options=options)
    (pipeline
     | "Numbers" >> beam.Create(list(range(20)))
     | "KeyByMod4" >> beam.Map(lambda n: (n % 4, n))
     | "Sum" >> beam.CombinePerKey(sum)
     | "Write" >> beam.ParDo(_WriteLines(str(tmp_path))))
    result = pipeline.run()
    result.wait_until_finish()

    # A portable job with a non-Prism id: the job went through a Java job service, not Prism and
    # not an in-process runner.
    assert isinstance(result, PortableResult)
    assert not PRISM_JOB_ID.match(result._job_id)
    assert result.state == "DONE"
    rows = sorted(tuple(json.loads(line)) for f in tmp_path.glob("out-*.jsonl")
                  for line in f.read_text().splitlines())
    assert rows == [(k, sum(n for n in range(20) if n % 4 == k)) for k in range(4)]
