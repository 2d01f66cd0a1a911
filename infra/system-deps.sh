#!/usr/bin/env bash
# Make sure the system tools the stack needs are present: a JDK >= 17 and Maven (Kafka from Maven
# Central), Go (Prism), kcat (an external Kafka client). Installs missing ones from Debian's packages
# when running as root; otherwise names the package to install. Extra Debian packages can be asked for: system-deps.sh nmap masscan
set -euo pipefail
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need java openjdk-17-jdk-headless
need mvn maven
# Prism (Beam 2.77) needs Go >= 1.26; any Go >= 1.21 fetches that toolchain from the Go module
# proxy by itself (GOTOOLCHAIN=auto). Debian 12's golang-go is 1.19, too old for that, so say so.
if ! command -v go >/dev/null 2>&1; then
  echo "system-deps: error: go not found; install Go >= 1.21 (it fetches the 1.26 toolchain Prism needs)" >&2
  exit 1
fi
gover=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [[ "$(printf '%s\n1.21\n' "${gover%%[!0-9.]*}" | sort -V | head -n 1)" != "1.21" ]]; then
  echo "system-deps: error: go $gover is older than 1.21; install a newer Go (Prism needs 1.26)" >&2
  exit 1
fi
need kcat kcat           # an independent (librdkafka) client, used by tests and operators
for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "system-deps: installing ${missing[*]} from Debian's packages ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "system-deps: error: missing ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
  exit 1
fi
