#!/usr/bin/env bash
# Cold set-up time (fresh clone, empty pip/Maven/Go caches: first fetch + build) and warm broker
# start time, on a side port so a running development broker is not disturbed.
#   bash bench/bench_setup.sh [WORKDIR]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
echo "bench_setup: cold clone in $work"
git clone -q "$src" "$work/repo"
cd "$work/repo"
export GOMODCACHE=$work/gomod GOCACHE=$work/gocache MAVEN_OPTS=-Dmaven.repo.local=$work/m2 PIP_NO_CACHE_DIR=1
start=$(date +%s.%N)
make setup
cold=$(awk -v a="$(date +%s.%N)" -v b="$start" "BEGIN{print a-b}")
export SCANFLOW_INFRA_KAFKA_PORT=29092 SCANFLOW_INFRA_KAFKA_CONTROLLER_PORT=29093
times=()
for run in first-start restart; do
  t0=$(date +%s.%N)
  .venv/bin/scanflow infra up >/dev/null
  times+=("$(awk -v a="$(date +%s.%N)" -v b="$t0" "BEGIN{print a-b}")")
  .venv/bin/scanflow infra down >/dev/null
done
printf 'cold set-up (venv + pip + Maven + Prism build): %.1f s\n' "$cold"
printf 'broker start incl. KRaft format, until metadata answers: %.1f s\n' "${times[0]}"
printf 'warm broker start (existing data), until metadata answers: %.1f s\n' "${times[1]}"
