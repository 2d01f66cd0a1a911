"""Prism runner fixtures, loaded for every test layer through ``pytest_plugins`` in tests/conftest.py.

- ``prism_binary``: the Prism binary for the installed Beam, built once by infra/prism/build.sh when
  it is missing (a build failure fails the tests that need it, it does not skip them).
- ``prism_server``: ONE long-lived Prism job server for the whole session. Each pipeline sent to it
  with ``--job_endpoint`` skips starting and stopping its own Prism process, which is most of the cost
  of a small pipeline (see docs/RUNNERS.md for the measured figures). Its log is kept in the
  session's temporary directory and printed when a proof fails.
- ``prism_options``: a factory of Prism PipelineOptions (streaming by default) aimed at that server.
- ``assert_ran_on_prism``: checks a pipeline result against that server (see
  :func:`pipelines.runners.prove_ran_on_prism`) and returns the proof.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from scanflow.config import REPO_ROOT, ConfigError, Settings, resolve_path

PRISM_BUILD = REPO_ROOT / "infra" / "prism" / "build.sh"


@pytest.fixture(scope="session")
def prism_binary(settings: Settings) -> Path:
    """The Prism binary; runs infra/prism/build.sh once if it is not there yet."""
    from pipelines.runners import prism_binary as configured_binary

    if not resolve_path(settings.beam.prism_location).is_file():
        result = subprocess.run(["bash", str(PRISM_BUILD)], capture_output=True, text=True,
                                env=dict(os.environ, SCANFLOW_PYTHON=sys.executable))
        if result.returncode != 0:
            pytest.fail(f"could not build Prism via infra/prism/build.sh:\n{result.stdout}\n{result.stderr}")
    try:
        return configured_binary(settings)
    except ConfigError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def prism_server(prism_binary: Path, tmp_path_factory: pytest.TempPathFactory):
    """One Prism job server for the session, stopped at the end."""
    from pipelines.runners import PrismServer

    server = PrismServer(prism_binary, tmp_path_factory.mktemp("prism") / "prism.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prism_options(settings: Settings, prism_server) -> Callable[..., object]:
    """Factory: ``prism_options(*extra, streaming=True) -> PipelineOptions`` for the session's Prism."""
    from pipelines.runners import pipeline_options

    def factory(*extra: str, streaming: bool = True):
        # ensure_running: the server exits by itself after a long idle spell; bring it back.
        return pipeline_options(settings, streaming=streaming, runner="prism",
                                extra=[*prism_server.ensure_running().pipeline_args(), *extra])

    return factory


@pytest.fixture(scope="session")
def assert_ran_on_prism(prism_server) -> Callable[..., object]:
    """``assert_ran_on_prism(result, options)``: fail unless the session's Prism ran that pipeline."""
    from pipelines.runners import RunnerProofError, prove_ran_on_prism

    def check(result, options=None):
        try:
            return prove_ran_on_prism(result, server=prism_server, options=options)
        except RunnerProofError as exc:
            pytest.fail(f"{exc}\n--- prism log tail ---\n{prism_server.log_tail()}")

    return check
