"""Wall time of the Prism smoke pipeline (tests/integration/test_prism_smoke.py), with and without a
long-lived Prism job server.

    .venv/bin/python bench/bench_prism_smoke.py [--runs 3]

Modes:

- ``shared server``: one :class:`pipelines.runners.PrismServer` for every run, pipelines sent to it
  with ``--job_endpoint`` (what the test fixtures do). The first run also pays for the LOOPBACK
  worker pool and Beam's lazy imports, so it is printed apart.
- ``own prism per run``: Beam's PrismRunner starts a fresh Prism process for each pipeline (the
  ``disable_prism_server_singleton`` experiment), i.e. what every separate Python process pays.

Every run is checked for its exact output and with the runner proof; the figures are printed, not
asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scanflow.config import REPO_ROOT, load_settings

# The smoke pipeline lives with its test; tests/ is not an installed package.
sys.path.insert(0, str(REPO_ROOT))

import apache_beam as beam  # noqa: E402

from pipelines.runners import PrismServer, pipeline_options, prism_binary, prove_ran_on_prism  # noqa: E402
from tests.integration.test_prism_smoke import (  # noqa: E402
    build_smoke_pipeline, expected_stateful, expected_windows, read_rows)


def run_once(options, out_dir: Path, server: PrismServer | None) -> float:
    """Build, run and verify the smoke pipeline once; return its wall time in seconds."""
    out_dir.mkdir(parents=True)
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build_smoke_pipeline(pipeline, out_dir)
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - started
    prove_ran_on_prism(result, server=server, options=options)
    if (read_rows(out_dir, "stateful") != expected_stateful()
            or read_rows(out_dir, "windows") != expected_windows()):
        raise SystemExit(f"smoke pipeline produced wrong output in {out_dir}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    """Print the smoke pipeline's wall time per mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per mode (default 3)")
    args = parser.parse_args(argv)
    settings = load_settings()
    binary = prism_binary(settings)

    with tempfile.TemporaryDirectory(prefix="bench-prism-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        with PrismServer(binary, root / "prism.log") as server:
            print(f"prism server start: {time.perf_counter() - started:.2f} s")

            def shared(i: int) -> float:
                options = pipeline_options(settings, streaming=True, runner="prism",
                                           extra=server.pipeline_args())
                return run_once(options, root / f"shared-{i}", server)

            first = shared(0)
            print(f"shared server, first run in process: {first:.2f} s")
            times = [shared(i) for i in range(1, args.runs + 1)]
            print(f"shared server, next {args.runs} runs: median {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f})")

        def own(i: int) -> float:
            options = pipeline_options(settings, streaming=True, runner="prism",
                                       extra=["--experiments=disable_prism_server_singleton"])
            return run_once(options, root / f"own-{i}", None)

        times = [own(i) for i in range(args.runs)]
        print(f"own prism per run, {args.runs} runs: median {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
