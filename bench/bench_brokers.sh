#!/usr/bin/env bash
# The whole loop's throughput on one broker and on a three-node cluster (issue 19), back to back.
#
#   bash bench/bench_brokers.sh                         # 5,000 IPs, 5 virtual days of 4 s each
#   IPS=20000 DAYS=7 DAY_S=10 bash bench/bench_brokers.sh
#
# Each run gets a broker (or cluster) of its own, started by infra/kafka/kafka.sh on free ports with
# its own state directory and the same heap per node (512 MiB), then bench/bench_e2e.py runs the loop
# of `scanflow run` (Prism scheduler, sim agents, lake) against it with SCANFLOW_KAFKA_BOOTSTRAP_SERVERS;
# the broker is stopped and its state removed afterwards. The session broker is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
IPS=${IPS:-5000}
DAYS=${DAYS:-5}
DAY_S=${DAY_S:-4}
AGENTS=${AGENTS:-2}

free_base() {   # a port p with p .. p+5 free on 127.0.0.1
    "$PY" - <<'EOF'
import socket
for _ in range(100):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); base = s.getsockname()[1]; s.close()
    if base + 6 > 65535:
        continue
    try:
        held = []
        for p in range(base, base + 6):
            t = socket.socket(); t.bind(("127.0.0.1", p)); held.append(t)
        for t in held:
            t.close()
        print(base)
        break
    except OSError:
        for t in held:
            t.close()
EOF
}

for brokers in 1 3; do
    state=$(mktemp -d /tmp/bench-brokers-XXXXXX)
    base=$(free_base)
    env_vars=(SCANFLOW_INFRA_KAFKA_BROKERS="$brokers" SCANFLOW_INFRA_KAFKA_PORT="$base"
              SCANFLOW_INFRA_KAFKA_CONTROLLER_PORT="$((base + 1))" SCANFLOW_INFRA_STATE_DIR="$state"
              SCANFLOW_INFRA_KAFKA_HEAP=512m SCANFLOW_INFRA_STATUS_TIMEOUT_S=180 SCANFLOW_PYTHON="$PY")
    if (( brokers == 1 )); then
        bootstrap="127.0.0.1:$base"
    else
        bootstrap="127.0.0.1:$base,127.0.0.1:$((base + 2)),127.0.0.1:$((base + 4))"
    fi
    echo "=== $brokers broker(s) at $bootstrap: starting ..."
    t0=$(date +%s)
    env -u SCANFLOW_KAFKA_BOOTSTRAP_SERVERS "${env_vars[@]}" bash infra/kafka/kafka.sh up
    echo "=== up in $(( $(date +%s) - t0 )) s; the loop: $IPS IPs, $DAYS days of $DAY_S s, $AGENTS agents"
    status=0
    SCANFLOW_KAFKA_BOOTSTRAP_SERVERS="$bootstrap" "$PY" bench/bench_e2e.py --ips "$IPS" --days "$DAYS" \
        --day-seconds "$DAY_S" --agents "$AGENTS" || status=$?
    env -u SCANFLOW_KAFKA_BOOTSTRAP_SERVERS "${env_vars[@]}" bash infra/kafka/kafka.sh down || true
    rm -rf "$state"
    echo "=== $brokers broker(s): bench_e2e exited $status; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    (( status == 0 )) || exit "$status"
done
