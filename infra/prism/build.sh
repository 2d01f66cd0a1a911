#!/usr/bin/env bash
# Build Beam's Prism runner for the installed apache-beam version from the Go module proxy and cache
# it at infra/.cache/prism/prism (plus a VERSION file). Rebuilds only when the Beam version changes.
#
#   infra/prism/build.sh            # uses the venv's apache-beam version
#   BEAM_VERSION=2.77.0 infra/prism/build.sh
#   SCANFLOW_PRISM_OUT=/some/dir infra/prism/build.sh   # build elsewhere (e.g. to time a cold build)
#
# Beam's PrismRunner would otherwise download a release zip from GitHub; scanflow always passes this
# binary as --prism_location instead (pipelines/runners.py, docs/RUNNERS.md).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${SCANFLOW_PRISM_OUT:-$repo/infra/.cache/prism}
python=${SCANFLOW_PYTHON:-$repo/.venv/bin/python}
[[ -x "$python" ]] || python=python3

version=${BEAM_VERSION:-$("$python" -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null || true)}
[[ -n "$version" ]] || { echo "prism: error: apache-beam is not installed; run 'make setup' or set BEAM_VERSION" >&2; exit 1; }

if [[ -x "$out/prism" && "$(cat "$out/VERSION" 2>/dev/null)" == "$version" ]]; then
  echo "prism: $out/prism (beam $version) is cached"
  exit 0
fi
command -v go >/dev/null || { echo "prism: error: go not found; install Go (Beam 2.77 needs >= 1.26; an older go with the default GOTOOLCHAIN=auto fetches that toolchain from the Go proxy)" >&2; exit 1; }
mkdir -p "$out"
echo "prism: building github.com/apache/beam/sdks/v2/go/cmd/prism@v$version (first time: a few minutes) ..."
start=$(date +%s)
GOBIN=$out GOFLAGS=-mod=mod go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$version"
echo "$version" > "$out/VERSION"
echo "prism: built $out/prism in $(( $(date +%s) - start )) s"
