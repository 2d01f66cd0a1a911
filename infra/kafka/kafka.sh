#!/usr/bin/env bash
# Fetch, start, stop and inspect the local Apache Kafka: one broker (KRaft, broker+controller in one
# JVM), or a replicated cluster of N such nodes with an N-voter controller quorum.
#
#   infra/kafka/kafka.sh fetch|up|down|status|reset|logs
#
# Settings come from the environment (the scanflow CLI sets them from its configuration):
#   SCANFLOW_INFRA_KAFKA_PORT             client listener's port                (default 9092)
#   SCANFLOW_INFRA_KAFKA_HOST             IPv4 address of this machine the client listener binds and
#                                         advertises, on one broker and on every node of a cluster
#                                         (default 127.0.0.1); e.g. a veth or LAN address, so that
#                                         agents in another network namespace or on another host can
#                                         reach the brokers. Controller listeners stay on 127.0.0.1.
#                                         A cluster keeps the address it was first started with.
#   SCANFLOW_INFRA_KAFKA_CONTROLLER_PORT  controller listener on 127.0.0.1      (default 9093)
#   SCANFLOW_INFRA_STATE_DIR              where data, logs and the pid file go  (default <repo>/.scanflow)
#   SCANFLOW_INFRA_KAFKA_HEAP             JVM heap                              (default 1g)
#   SCANFLOW_INFRA_STATUS_TIMEOUT_S       seconds `status`/`up` wait for an answer (default 60)
#   SCANFLOW_PYTHON                       python with kafka-python for the metadata probe (default: .venv)
#   SCANFLOW_INFRA_KAFKA_BROKERS          1 = one broker (default); N >= 3 = a cluster of N nodes, node i
#                                         on client port PORT+2(i-1) and controller port
#                                         CONTROLLER_PORT+2(i-1), data in <state dir>/kafka-cluster/node-i;
#                                         replication factor 3 (at most N), min.insync.replicas 2.
#                                         `down`, `status` and `reset` act on a cluster that exists in
#                                         the state dir whatever this says; `up` with a cluster running
#                                         starts only its missing nodes (a node that was killed rejoins).
# Clients reach this broker at $SCANFLOW_INFRA_KAFKA_HOST:$SCANFLOW_INFRA_KAFKA_PORT: scanflow derives
# kafka.bootstrap_servers from the same setting unless it is set; `up` and `status` say so when an
# explicit SCANFLOW_KAFKA_BOOTSTRAP_SERVERS names this machine but another port.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${SCANFLOW_INFRA_KAFKA_PORT:-9092}
ctrl_port=${SCANFLOW_INFRA_KAFKA_CONTROLLER_PORT:-9093}
state_root=${SCANFLOW_INFRA_STATE_DIR:-$repo/.scanflow}
state=$state_root/kafka
cluster=$state_root/kafka-cluster
brokers=${SCANFLOW_INFRA_KAFKA_BROKERS:-1}
[[ "$brokers" =~ ^[0-9]+$ ]] && (( brokers >= 1 )) || { printf 'kafka: error: SCANFLOW_INFRA_KAFKA_BROKERS=%s is not a whole number >= 1\n' "$brokers" >&2; exit 2; }
host=${SCANFLOW_INFRA_KAFKA_HOST:-127.0.0.1}
valid_ipv4() {
  local IFS=. part parts
  [[ "$1" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
  read -ra parts <<< "$1"
  for part in "${parts[@]}"; do (( 10#$part <= 255 )) || return 1; done
}
valid_ipv4 "$host" && [[ "$host" != 0.* ]] \
  || { printf 'kafka: error: SCANFLOW_INFRA_KAFKA_HOST=%s is not an IPv4 address (e.g. 127.0.0.1, or an address of this machine other clients reach)\n' "$host" >&2; exit 2; }
libs=$repo/infra/.cache/kafka/libs
heap=${SCANFLOW_INFRA_KAFKA_HEAP:-1g}
timeout=${SCANFLOW_INFRA_STATUS_TIMEOUT_S:-60}
python=${SCANFLOW_PYTHON:-}
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python=$repo/.venv/bin/python; else python=python3; fi
fi
pidfile=$state/kafka.pid
logfile=$state/logs/kafka.out
datadir=$state/data
props=$state/server.properties

say() { printf 'kafka: %s\n' "$*"; }
die() { printf 'kafka: error: %s\n' "$*" >&2; exit 1; }

check_host_local() {
  # The broker can only bind an address this machine has: say so now, not after a status timeout.
  [[ "$host" == 127.* ]] && return 0
  command -v ip >/dev/null || return 0
  ip -o -4 addr show | grep -q " inet $host/" \
    || die "SCANFLOW_INFRA_KAFKA_HOST=$host is not an address of this machine (ip -4 addr); use 127.0.0.1 or one it has"
}

props_host() {
  # The address the broker of $props advertises (it may have been started with another setting).
  local h=""
  [[ -f "$props" ]] && h=$(sed -n 's|^advertised.listeners=PLAINTEXT://\(.*\):[0-9]*$|\1|p' "$props")
  echo "${h:-$host}"
}

check_bootstrap() {
  # An explicit client address on this machine that is not this broker's port: clients would talk
  # to another broker (or none). Warn, do not fail: the operator may mean it.
  local list=${SCANFLOW_KAFKA_BOOTSTRAP_SERVERS:-} entry host listen_host=$host local_seen=0
  [[ -n "$list" ]] || return 0
  IFS=',' read -ra entries <<< "$list"
  for entry in "${entries[@]}"; do
    entry=${entry// /}
    host=${entry%:*}; host=${host#[}; host=${host%]}
    if [[ "$host" == 127.* || "$host" == localhost || "$host" == ::1 || "$host" == "$listen_host" ]]; then
      local_seen=1
      [[ "${entry##*:}" == "$port" ]] && return 0
    fi
  done
  if (( local_seen )); then
    printf 'kafka: warning: SCANFLOW_KAFKA_BOOTSTRAP_SERVERS=%s names this machine but not port %s of this broker (SCANFLOW_INFRA_KAFKA_PORT); unset it or make the two agree\n' "$list" "$port" >&2
  fi
}

fetch() {
  if compgen -G "$libs/kafka_2.13-*.jar" >/dev/null; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
  command -v java >/dev/null || die "java not found: install a JDK >= 17 (apt-get install openjdk-17-jdk-headless)"
  say "resolving the broker jars from Maven Central into infra/.cache/kafka/libs ..."
  mvn -q -B -f "$here/pom.xml" package || die "maven could not resolve the broker (see output above)"
  compgen -G "$libs/kafka_2.13-*.jar" >/dev/null || die "maven ran but no kafka_2.13 jar is in $libs"
}

running_pid() {
  # Prints the broker pid if the pid file names a live broker of ours (this properties file);
  # cleans a stale file.
  [[ -f "$pidfile" ]] || return 1
  local pid cmd; pid=$(cat "$pidfile" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]]; then
    # While the starter execs into the JVM its cmdline is briefly empty: look again before calling
    # the pid file stale, or a live broker would be orphaned.
    for _ in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
      # Ours: a broker started with this very properties file. A pid file left behind by a broker
      # that died can name another broker's process once pids wrap (32768 on some machines), and
      # `down` must not stop that one.
      if [[ "$cmd" == *kafka.Kafka* && "$cmd" == *"$props"* ]]; then echo "$pid"; return 0; fi
      [[ -z "$cmd" ]] || break
      sleep 0.1
    done
  fi
  rm -f "$pidfile"
  return 1
}

write_props() {
  mkdir -p "$datadir" "$state/logs"
  cat > "$props" <<PROPS
# written by infra/kafka/kafka.sh on every start; edit the script, not this file
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${ctrl_port}
listeners=PLAINTEXT://${host}:${port},CONTROLLER://127.0.0.1:${ctrl_port}
advertised.listeners=PLAINTEXT://${host}:${port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=${datadir}
num.partitions=4
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
log.retention.hours=-1
message.max.bytes=4194304
PROPS
}

java_run() { (exec_java "$@"); }

exec_java() {
  exec java -Xms256m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$here/log4j2.properties" "-Dkafka.logs.dir=$state/logs" \
    -cp "$libs/*" "$@"
}

up() {
  fetch
  if pid=$(running_pid); then say "already running (pid $pid) on $(props_host):$port"; status; return; fi
  command -v java >/dev/null || die "java not found: install a JDK >= 17"
  check_host_local
  write_props
  if [[ ! -f "$datadir/meta.properties" ]]; then
    local cid; cid=$(java_run kafka.tools.StorageTool random-uuid | tail -n 1)
    say "formatting KRaft storage in $datadir (cluster $cid)"
    java_run kafka.tools.StorageTool format -t "$cid" -c "$props" --ignore-formatted >/dev/null
  fi
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    die "port $port is taken by another process: stop it or set [infra] kafka_port (env SCANFLOW_INFRA_KAFKA_PORT)"
  fi
  say "starting broker on $host:$port (log: $logfile)"
  # setsid: the broker outlives the shell that started it and gets no terminal signals.
  setsid "$here/kafka.sh" __exec kafka.Kafka "$props" >>"$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  status
}

status() {
  local pid
  if ! pid=$(running_pid); then say "not running"; return 3; fi
  local at; at=$(props_host)
  "$python" "$here/wait_metadata.py" "$at:$port" "$timeout" \
    || { say "process $pid is up but the broker did not answer; last log lines:"; tail -n 20 "$logfile" >&2; return 4; }
  say "running (pid $pid) on $at:$port, data in $datadir"
}

down() {
  local pid
  if ! pid=$(running_pid); then say "not running"; return 0; fi
  say "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "still alive after 30 s, sending KILL"; kill -KILL "$pid" || true; fi
  rm -f "$pidfile"
  say "stopped"
}

reset() {
  down
  say "wiping $datadir"
  rm -rf "$datadir"
}


# --- a cluster of N combined broker+controller nodes ---------------------------------------------
# Node i: client port PORT+2(i-1), controller port CONTROLLER_PORT+2(i-1), everything else in
# $cluster/node-i. The layout (node count, base ports, cluster id) is written once at the first `up`;
# later commands read it, so `down` and `status` need no flags and a cluster's ports cannot drift.

cluster_exists() { [[ -f "$cluster/layout" ]]; }

load_layout() {
  # shellcheck disable=SC1091
  source "$cluster/layout"
  brokers=$layout_brokers; port=$layout_port; ctrl_port=$layout_ctrl_port; host=${layout_host:-127.0.0.1}
}

node_port() { echo $(( port + 2 * ($1 - 1) )); }
node_ctrl_port() { echo $(( ctrl_port + 2 * ($1 - 1) )); }

cluster_bootstrap() {
  local i list=()
  for i in $(seq 1 "$brokers"); do list+=("$host:$(node_port "$i")"); done
  (IFS=,; echo "${list[*]}")
}

select_node() {
  # Points the single-broker variables (pid file, data, properties) at node $1 of the cluster.
  node=$1
  state=$cluster/node-$node
  pidfile=$state/kafka.pid
  logfile=$state/logs/kafka.out
  datadir=$state/data
  props=$state/server.properties
}

write_node_props() {
  local i voters=() rf=$(( brokers < 3 ? brokers : 3 ))
  local isr=$(( rf > 1 ? 2 : 1 ))
  for i in $(seq 1 "$brokers"); do voters+=("$i@127.0.0.1:$(node_ctrl_port "$i")"); done
  mkdir -p "$datadir" "$state/logs"
  cat > "$props" <<PROPS
# written by infra/kafka/kafka.sh on every start; edit the script, not this file
process.roles=broker,controller
node.id=${node}
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=PLAINTEXT://${host}:$(node_port "$node"),CONTROLLER://127.0.0.1:$(node_ctrl_port "$node")
advertised.listeners=PLAINTEXT://${host}:$(node_port "$node")
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=${datadir}
num.partitions=4
default.replication.factor=${rf}
min.insync.replicas=${isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor=${rf}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=${rf}
transaction.state.log.min.isr=${isr}
share.coordinator.state.topic.replication.factor=${rf}
share.coordinator.state.topic.min.isr=${isr}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
log.retention.hours=-1
message.max.bytes=4194304
PROPS
}

cluster_up() {
  fetch
  command -v java >/dev/null || die "java not found: install a JDK >= 17"
  if cluster_exists; then
    local want=$brokers want_host=${SCANFLOW_INFRA_KAFKA_HOST:-}; load_layout
    (( want == 1 || want == brokers )) || die "a cluster of $brokers nodes exists in $cluster; \`reset\` it to change its size"
    [[ -z "$want_host" || "$want_host" == "$host" ]] \
      || die "a cluster on $host exists in $cluster; \`reset\` it to move it to SCANFLOW_INFRA_KAFKA_HOST=$want_host"
  else
    (( brokers >= 3 )) || die "a cluster needs at least 3 nodes (SCANFLOW_INFRA_KAFKA_BROKERS=$brokers); use 1 for one broker"
    if running_pid >/dev/null; then die "the single broker of $state is running: stop it first (\`down\`)"; fi
    local i all=()
    for i in $(seq 1 "$brokers"); do all+=("$(node_port "$i")" "$(node_ctrl_port "$i")"); done
    [[ $(printf '%s\n' "${all[@]}" | sort -u | wc -l) == $(( 2 * brokers )) ]] \
      || die "node ports overlap: client ports $port+2k and controller ports $ctrl_port+2k must all differ"
    check_host_local
    mkdir -p "$cluster"
    local cid; cid=$(java_run kafka.tools.StorageTool random-uuid | tail -n 1)
    printf 'layout_brokers=%s\nlayout_port=%s\nlayout_ctrl_port=%s\nlayout_cluster_id=%s\nlayout_host=%s\n' \
      "$brokers" "$port" "$ctrl_port" "$cid" "$host" > "$cluster/layout"
    load_layout
  fi
  local i started=0
  for i in $(seq 1 "$brokers"); do
    select_node "$i"
    if pid=$(running_pid); then continue; fi
    write_node_props
    if [[ ! -f "$datadir/meta.properties" ]]; then
      java_run kafka.tools.StorageTool format -t "$layout_cluster_id" -c "$props" --ignore-formatted >/dev/null
    fi
    if (exec 3<>"/dev/tcp/$host/$(node_port "$i")") 2>/dev/null; then
      die "port $(node_port "$i") of node $i is taken by another process"
    fi
    say "starting node $i on $host:$(node_port "$i") (controller :$(node_ctrl_port "$i"), log: $logfile)"
    setsid "$here/kafka.sh" __exec kafka.Kafka "$props" >>"$logfile" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    started=$(( started + 1 ))
  done
  (( started )) || say "all $brokers nodes already running"
  cluster_status
}

cluster_status() {
  cluster_exists || { say "not running"; return 3; }
  load_layout
  local i pid live=0
  for i in $(seq 1 "$brokers"); do
    select_node "$i"
    if pid=$(running_pid); then
      live=$(( live + 1 ))
      say "node $i: running (pid $pid) on $host:$(node_port "$i"), data in $datadir"
    else
      say "node $i: not running ($host:$(node_port "$i"))"
    fi
  done
  (( live )) || { say "cluster: not running"; return 3; }
  # What the cluster says: registered brokers, controller, partitions below their replica count.
  "$python" "$here/cluster_status.py" "$(cluster_bootstrap)" "$live" "$timeout" \
    || { say "the cluster did not answer as expected; last log lines of each node:"
         for i in $(seq 1 "$brokers"); do select_node "$i"; say "node $i:"; tail -n 5 "$logfile" 2>/dev/null || true; done
         return 4; }
  say "clients: kafka.bootstrap_servers=$(cluster_bootstrap)"
  (( live == brokers )) || return 5
}

cluster_down() {
  # Every node at once: stopped one by one, the last ones would wait for a quorum that is gone.
  load_layout
  local i pids=() pid
  for i in $(seq 1 "$brokers"); do
    select_node "$i"
    if pid=$(running_pid); then say "node $i: stopping pid $pid"; kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  (( ${#pids[@]} )) || { say "not running"; return 0; }
  for _ in $(seq 1 60); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then say "pid $pid still alive after 30 s, sending KILL"; kill -KILL "$pid" || true; fi
  done
  for i in $(seq 1 "$brokers"); do select_node "$i"; rm -f "$pidfile"; done
  say "stopped"
}

cluster_reset() {
  cluster_down
  say "wiping $cluster"
  rm -rf "$cluster"
}

case "${1:-}" in
  fetch) fetch; say "broker jars in $libs" ;;
  up) if (( brokers > 1 )) || cluster_exists; then cluster_up; else check_bootstrap; up; fi ;;
  down|stop) if cluster_exists; then cluster_down; else down; fi ;;
  status) if cluster_exists; then cluster_status; else check_bootstrap; status; fi ;;
  reset) if cluster_exists; then cluster_reset; else reset; fi ;;
  __exec) shift; exec_java "$@" ;;  # internal: replaces itself with the broker JVM
  logs) if cluster_exists; then
          load_layout; for i in $(seq 1 "$brokers"); do select_node "$i"; say "node $i:"; tail -n "${2:-50}" "$logfile"; done
        else tail -n "${2:-50}" "$logfile"; fi ;;
  *) die "usage: kafka.sh fetch|up|down|status|reset|logs [N]" ;;
esac
