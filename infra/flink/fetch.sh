#!/usr/bin/env bash
# Fetch Beam's Flink job server jar for the installed apache-beam version from Maven Central into the
# git-ignored infra/.cache/flink/ (org.apache.beam:beam-runners-flink-<flink>-job-server:<beam>).
# The FlinkRunner then gets it as --flink_job_server_jar (pipelines/runners.py), so Beam never tries to
# download it itself. With --flink_master=[local] the job server runs an embedded Flink mini-cluster:
# nothing else (no Flink distribution) is needed, only Java 11+.
#
#   infra/flink/fetch.sh                       # Flink version: Beam's default for this SDK
#   FLINK_VERSION=1.19 infra/flink/fetch.sh    # one of the versions the SDK lists as published
#   BEAM_VERSION=2.77.0 infra/flink/fetch.sh
#
# Exit status: 0 when the jar is in the cache, 1 when it could not be resolved (message says why).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${SCANFLOW_FLINK_OUT:-$repo/infra/.cache/flink}
python=${SCANFLOW_PYTHON:-$repo/.venv/bin/python}
[[ -x "$python" ]] || python=python3
die() { echo "flink: error: $*" >&2; exit 1; }

beam=${BEAM_VERSION:-$("$python" -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null || true)}
[[ -n "$beam" ]] || die "apache-beam is not installed; run 'make setup' or set BEAM_VERSION"
# The Flink versions this SDK knows job servers for; the last one is what Beam itself would pick.
published=$("$python" -c '
from apache_beam.options.pipeline_options import FlinkRunnerOptions as F
print(" ".join(F.PUBLISHED_FLINK_VERSIONS))' 2>/dev/null || echo "1.19 1.20 2.0 2.1 2.2")
flink=${FLINK_VERSION:-${published##* }}
[[ " $published " == *" $flink "* ]] || die "FLINK_VERSION=$flink is not one of: $published"

artifact=beam-runners-flink-$flink-job-server
jar=$out/$artifact-$beam.jar
if [[ -s "$jar" ]]; then
  echo "flink: $jar is cached"
  exit 0
fi
command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
command -v java >/dev/null || die "java not found: install a JDK 11+ (apt-get install openjdk-17-jdk-headless)"
mkdir -p "$out"
echo "flink: resolving org.apache.beam:$artifact:$beam from Maven Central ..."
start=$(date +%s)
# One artifact, no transitive resolution: the job server jar is self-contained (shaded).
# -U: Maven otherwise remembers a "not found" for a day and would not ask again after a fix upstream.
if ! mvn -B -q -U org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact="org.apache.beam:$artifact:$beam:jar" -DoutputDirectory="$out" \
      -Dmdep.overWriteReleases=true -Dtransitive=false >"$out/fetch.log" 2>&1; then
  grep -m1 '\[ERROR\]' "$out/fetch.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-400 >&2 || true
  die "could not fetch org.apache.beam:$artifact:$beam (full log: $out/fetch.log). Try another
  FLINK_VERSION (published for this SDK: $published), or put the jar somewhere and set
  beam.flink_job_server_jar (SCANFLOW_BEAM_FLINK_JOB_SERVER_JAR) to its path; see docs/RUNNERS.md"
fi
[[ -s "$jar" ]] || die "maven succeeded but $jar is missing (see $out/fetch.log)"
echo "flink: fetched $jar ($(du -h "$jar" | cut -f1)) in $(( $(date +%s) - start )) s"
