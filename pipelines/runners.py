"""Beam runner selection: pipeline options per runner, a long-lived Prism job server, runner proof.

scanflow runs the same pipelines on four runners (``beam.runner`` setting):

``prism``
    Beam's Go runner, the local streaming engine. The binary is built from the Go module proxy by
    ``scanflow infra prism`` (``infra/prism/build.sh``) and always passed to Beam as a local
    ``--prism_location``: Beam's default is to download a release zip from GitHub, which a machine
    without general internet access cannot do. Workers run in the submitting process (LOOPBACK).
``fnapi``
    Beam's in-process FnApiRunner, for bounded work (replay, evaluation, archive).
``flink``
    The portable FlinkRunner with Beam's Flink job server jar (``infra/flink/fetch.sh``); ``[local]``
    starts an embedded Flink mini-cluster inside the job server.
``dataflow``
    Google Cloud Dataflow. Needs ``--project``, ``--region`` and ``--temp_location`` in ``extra``
    and the ``apache-beam[gcp]`` extra installed; workers run in Beam's SDK container (no LOOPBACK).

Beam's default DirectRunner quietly picks another runner (Prism downloaded from GitHub, then the
FnApiRunner or its own bundle runner) when the first choice fails, so "the test passed" does not
mean "it ran on Prism". :func:`prove_ran_on_prism` checks it from the job service's side.
"""

from __future__ import annotations

import logging
import re
import shlex
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from scanflow.config import REPO_ROOT, BeamSettings, ConfigError, Settings, resolve_path

#: Where ``infra/flink/fetch.sh`` puts the job server jar when ``beam.flink_job_server_jar`` is empty.
FLINK_CACHE = REPO_ROOT / "infra" / ".cache" / "flink"
FNAPI_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
#: Prism numbers its jobs ``job-001``, ``job-002``, ... (jobservices/management.go ``nextId``).
PRISM_JOB_ID = re.compile(r"^job-\d{3,}$")
_DATAFLOW_REQUIRED = ("--project", "--region", "--temp_location")


class RunnerProofError(AssertionError):
    """A pipeline did not demonstrably run on the runner it was meant for."""


def _beam(settings: Settings | BeamSettings) -> BeamSettings:
    return settings.beam if isinstance(settings, Settings) else settings


def prism_binary(settings: Settings | BeamSettings) -> Path:
    """The configured Prism binary, or :class:`ConfigError` with the command that builds it."""
    path = resolve_path(_beam(settings).prism_location)
    if not path.is_file():
        raise ConfigError(f"beam.prism_location: no Prism binary at {path}; run `scanflow infra prism` "
                          "(infra/prism/build.sh) to build it, or point beam.prism_location at one")
    if not path.stat().st_mode & 0o111:
        raise ConfigError(f"beam.prism_location: {path} is not executable; run `scanflow infra prism` "
                          "to rebuild it")
    return path


def flink_job_server_jar(settings: Settings | BeamSettings) -> Path:
    """The Flink job server jar: the setting if given, else the one ``infra/flink/fetch.sh`` cached."""
    configured = _beam(settings).flink_job_server_jar
    if configured:
        path = resolve_path(configured)
        if not path.is_file():
            raise ConfigError(f"beam.flink_job_server_jar: {path} does not exist; run infra/flink/fetch.sh "
                              "or fix the path")
        return path
    from apache_beam import __version__ as beam_version

    # fetch.sh names the jar after the Beam version, so a jar left from an older Beam is not picked up.
    found = sorted(FLINK_CACHE.glob(f"beam-runners-flink-*-job-server-{beam_version}.jar"))
    if not found:
        raise ConfigError(f"beam.flink_job_server_jar: no job server jar for Beam {beam_version} in "
                          f"{FLINK_CACHE.relative_to(REPO_ROOT)}; run infra/flink/fetch.sh "
                          "(see docs/RUNNERS.md) or set beam.flink_job_server_jar")
    return found[-1]


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


#: Deadline of a live job's state/message streams (10 years): long enough never to end a live job.
LIVE_JOB_STREAM_TIMEOUT_S = 10 * 365 * 24 * 3600


def pipeline_options(settings: Settings | BeamSettings, *, streaming: bool, runner: str | None = None,
                     extra: list[str] | None = None) -> PipelineOptions:
    """PipelineOptions for ``runner`` (default: the ``beam.runner`` setting).

    ``extra`` is appended last, so it can add anything (``--job_endpoint``, ``--parallelism``) or
    override a default. For Prism a unique ``--job_name`` is set unless ``extra`` has one, so the job
    can be found again on the job server (:func:`prove_ran_on_prism`).
    """
    beam = _beam(settings)
    name = runner or beam.runner
    extra = list(extra or [])
    args: list[str] = []
    if name == "prism":
        args += ["--runner=PrismRunner", f"--prism_location={prism_binary(beam)}",
                 f"--environment_type={beam.environment_type}"]
        if not _has_flag(extra, "--job_name"):
            args.append(f"--job_name=scanflow-{uuid.uuid4().hex[:12]}")
    elif name == "fnapi":
        if streaming:
            raise ConfigError("beam.runner: fnapi runs bounded pipelines only; use prism (or flink) "
                              "for a streaming pipeline")
        args.append(f"--runner={FNAPI_RUNNER}")
    elif name == "flink":
        args += ["--runner=FlinkRunner", f"--flink_master={beam.flink_master}",
                 f"--flink_job_server_jar={flink_job_server_jar(beam)}",
                 f"--environment_type={beam.environment_type}"]
    elif name == "dataflow":
        missing = [f for f in _DATAFLOW_REQUIRED if not _has_flag(extra, f)]
        if missing:
            raise ConfigError(f"beam.runner: dataflow needs {', '.join(missing)} in the extra pipeline "
                              "arguments (e.g. --project=my-project --region=europe-west1 "
                              "--temp_location=gs://bucket/tmp)")
        # No environment_type: Dataflow workers run Beam's SDK container, LOOPBACK cannot reach them.
        args.append("--runner=DataflowRunner")
    else:
        raise ConfigError(f"beam.runner: {name!r} is not one of prism, fnapi, flink, dataflow")
    if streaming:
        args.append("--streaming")
        if name in ("prism", "flink"):
            # Beam uses job_server_timeout (default 300 s) as the gRPC deadline of the job's state and
            # message streams, so wait_until_finish() of a live job fails with DEADLINE_EXCEEDED after
            # five minutes (seen in the soak). A live scheduler runs for months.
            args.append(f"--job_server_timeout={LIVE_JOB_STREAM_TIMEOUT_S}")
    return PipelineOptions(args + extra)


class PrismServer:
    """One long-lived Prism job server on 127.0.0.1, shared by many pipelines via ``--job_endpoint``.

    Beam's PrismRunner otherwise starts (and stops) its own Prism per Python process. Owning the
    process gives a known endpoint, a log file to read and a job list to check the runner against.
    Prism listens on all interfaces (it has no bind-address flag); clients here only use 127.0.0.1.
    ``idle_shutdown_s`` makes an orphaned server (say, after a killed test run) exit by itself;
    :meth:`ensure_running` restarts it if that happened while its owner still wanted it.
    """

    def __init__(self, binary: Path, log_path: Path, *, port: int = 0, idle_shutdown_s: float = 900.0,
                 log_level: str = "info", start_timeout_s: float = 30.0) -> None:
        self.binary = Path(binary)
        self.log_path = Path(log_path)
        self.port = port
        self.idle_shutdown_s = idle_shutdown_s
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` for ``--job_endpoint``."""
        return f"127.0.0.1:{self.port}"

    def pipeline_args(self) -> list[str]:
        """The extra pipeline arguments that send a Prism pipeline to this server."""
        return [f"--job_endpoint={self.endpoint}"]

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "PrismServer":
        """Start Prism and wait until its job service accepts connections."""
        if self.running:
            return self
        if not self.port:
            self.port = _free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.binary), f"--job_port={self.port}", "--serve_http=false",
               f"--log_level={self.log_level}", "--log_kind=text",
               f"--idle_shutdown_timeout={int(self.idle_shutdown_s)}s"]
        with open(self.log_path, "ab") as log:
            log.write(f"# {shlex.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prism exited with {self._proc.returncode} at start; "
                                   f"see {self.log_path}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"prism did not listen on {self.endpoint} within {self.start_timeout_s} s; "
                           f"see {self.log_path}")

    def ensure_running(self) -> "PrismServer":
        """Start the server again (same port if free) when it has exited, e.g. after idling out."""
        if not self.running:
            self._proc = None
            try:
                return self.start()
            except RuntimeError:
                self.port = 0
                return self.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (KILL if it does not exit in ``timeout_s``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "PrismServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _free_port() -> int:
    # Small race (another process may take the port before Prism binds it); start() then fails
    # with Prism's own "failed to listen" and ensure_running() retries on a fresh port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PrismProof:
    """What the Prism job service reported about a finished pipeline."""

    job_id: str
    job_name: str
    state: str
    endpoint: str


def list_jobs(endpoint: str, timeout_s: float = 10.0) -> list[Any]:
    """``GetJobs`` on a Beam job service: a list of ``JobInfo`` protos."""
    import grpc
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
        return list(stub.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=timeout_s).job_info)


def prove_ran_on_prism(result: Any, *, server: PrismServer | None = None,
                       options: PipelineOptions | None = None) -> PrismProof:
    """Raise :class:`RunnerProofError` unless ``result`` comes from a job that Prism ran to DONE.

    Checks, in order:

    1. the result is a portable job, not an in-process (DirectRunner, FnApiRunner) result;
    2. its job id has Prism's form ``job-NNN`` (Flink's and Beam's embedded job services differ);
    3. the job service the result talked to lists that job as DONE;
    4. given ``options``: the job carries the pipeline's ``--job_name``;
    5. given ``server``: this very Prism process lists the job under the same (unique) job name and
       its log names the job id, a side effect no other runner produces. Prism numbers jobs per
       process, so the job name, not the id, tells one Prism's ``job-001`` from another's.
    """
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability.portable_runner import PipelineResult as PortableResult

    if not isinstance(result, PortableResult):
        raise RunnerProofError(f"pipeline result is a {type(result).__module__}.{type(result).__name__}: "
                               "it ran in-process, not on a Prism job server")
    # Beam has no public accessor for the job id and the job service of a portable result.
    job_id = getattr(result, "_job_id", None)
    service = getattr(result, "_job_service", None)
    if not job_id or service is None:
        raise RunnerProofError("portable result carries no job id; has Beam's PipelineResult changed?")
    if not PRISM_JOB_ID.match(job_id):
        raise RunnerProofError(f"job id {job_id!r} is not a Prism job id (job-NNN): another job "
                               "service (Flink, Beam's embedded one) ran it")
    own = _find_job(list(service.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=10).job_info),
                    job_id, "the job service the pipeline was submitted to")
    state = beam_job_api_pb2.JobState.Enum.Name(own.state)
    if state != "DONE":
        raise RunnerProofError(f"Prism job {job_id} is {state}, not DONE")
    # Beam's portable client always prepares jobs named "job"; the pipeline's own --job_name
    # travels in the pipeline options, which Prism keeps with the job.
    job_name = _option(own.pipeline_options, "job_name")
    if options is not None:
        from apache_beam.options.pipeline_options import GoogleCloudOptions

        wanted = options.view_as(GoogleCloudOptions).job_name
        if wanted and job_name != wanted:
            raise RunnerProofError(f"Prism job {job_id} has job_name {job_name!r}, not {wanted!r}: "
                                   "the result belongs to another pipeline")
    endpoint = "the runner's own Prism"
    if server is not None:
        endpoint = server.endpoint
        mine = _find_job(list_jobs(endpoint), job_id, f"the Prism server at {endpoint}")
        if not job_name or _option(mine.pipeline_options, "job_name") != job_name:
            raise RunnerProofError(f"the Prism server at {endpoint} has a {job_id} too, but it is job "
                                   f"{_option(mine.pipeline_options, 'job_name')!r}, not {job_name!r}: "
                                   "the pipeline ran on another job service")
        log = server.log_path.read_text(errors="replace")
        if f"{job_id}[" not in log:
            raise RunnerProofError(f"Prism's log {server.log_path} never mentions job {job_id}")
    return PrismProof(job_id=job_id, job_name=job_name, state=state, endpoint=endpoint)


def _find_job(jobs: list[Any], job_id: str, where: str) -> Any:
    for info in jobs:
        if info.job_id == job_id:
            return info
    raise RunnerProofError(f"job {job_id} is not known to {where}; it lists {[j.job_id for j in jobs]}")


def _option(options_struct: Any, name: str) -> str:
    """One pipeline option from the ``beam:option:<name>:v1`` struct a job service stores."""
    key = f"beam:option:{name}:v1"
    return options_struct.fields[key].string_value if key in options_struct.fields else ""


#: Loggers that report a job's own cancellation as an error: Prism's log relay ("Bundle Failed.
#: (error='pipeline canceled')" for every bundle in flight) and kafka-python's metadata refresh
#: interrupted by the cancel.
_CANCEL_LOGGERS = ("PrismJobServer", "apache_beam.utils.subprocess_server", "PrismRunner", "kafka.cluster", "kafka.client",
                   "kafka.conn")


class ExpectedCancel(logging.Filter):
    """Once :meth:`cancelling` is called (this process asked the job to stop), an ERROR record of
    the cancel itself (its message says canceled / cancelled) is logged at INFO: an ordered stop is
    not a failure, and an operator reading ERROR lines should find only real ones."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False

    def __enter__(self) -> "ExpectedCancel":
        for name in _CANCEL_LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            return  # the cancel's last reports (a Kafka reader thread's) come after the job ended
        for name in _CANCEL_LOGGERS:
            logging.getLogger(name).removeFilter(self)

    def cancelling(self) -> None:
        self.active = True

    def filter(self, record: logging.LogRecord) -> bool:
        if self.active and record.levelno >= logging.ERROR:
            text = record.getMessage().lower()
            if "canceled" in text or "cancelled" in text:
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def final_state(result, timeout_s: float = 10.0, poll_s: float = 0.1) -> str:
    """The job's state once it is terminal, waiting up to ``timeout_s`` for it: the job service
    answers a cancel before the job has ended (it reports CANCELLING for a moment), and the
    scheduler's last line says how the job ended, not how far the cancel had got. After the timeout
    (or when the job server is gone) the last state seen is returned, as it is."""
    deadline = time.monotonic() + timeout_s
    state = "UNKNOWN"
    while True:
        try:
            state = str(result.state).rsplit(".", 1)[-1]
        except Exception:  # noqa: BLE001 - the job server may be gone at shutdown: report what was seen
            return state
        if PipelineState.is_terminal(state) or time.monotonic() >= deadline:
            return state
        time.sleep(poll_s)
