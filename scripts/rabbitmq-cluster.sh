#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on loopback, beside the dev broker (scripts/dev-services.sh installs
# RabbitMQ): nodes rit1..rit3@localhost, AMQP on 127.0.0.1:5681..5683, state under
# $REFLOW_CLUSTER_DIR (default /var/lib/reflow-agent-dev/cluster). Idempotent.
#
#   scripts/rabbitmq-cluster.sh start          start the nodes, which form one cluster (prints the URL);
#                                              unless all three already run, it starts a fresh
#                                              cluster, as state left by an earlier run would
#                                              make a restarted node wait minutes for its peers
#   scripts/rabbitmq-cluster.sh stop [N]       stop node N (1..3), or every node
#   scripts/rabbitmq-cluster.sh leader QUEUE   the node leading QUEUE (vhost /)
#   scripts/rabbitmq-cluster.sh url            amqp://guest:guest@127.0.0.1:5681,...:5683/%2f
set -euo pipefail
DIR=${REFLOW_CLUSTER_DIR:-/var/lib/reflow-agent-dev/cluster}
NODES=(1 2 3)
log() { printf '[rabbitmq-cluster] %s\n' "$*" >&2; }
node() { echo "rit$1@localhost"; }
port() { echo $((5680 + $1)); }
ctl() { local n=$1; shift; rabbitmqctl -q -n "$(node "$n")" "$@"; }
# A node is up once its AMQP listener accepts, which RabbitMQ opens last in its boot. (A TCP
# probe: each rabbitmqctl call starts an Erlang VM, about 0.8 s of CPU.)
up() { (exec 3<>"/dev/tcp/127.0.0.1/$(port "$1")") 2>/dev/null; }
url() {
  local hosts=() n
  for n in "${NODES[@]}"; do hosts+=("127.0.0.1:$(port "$n")"); done
  (IFS=,; echo "amqp://guest:guest@${hosts[*]}/%2f")
}

start_node() {
  local n=$1 d="$DIR/rit$1"
  if up "$n"; then return 0; fi
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$(port "$n")
consumer_timeout = 36600000
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = $(node 1)
cluster_formation.classic_config.nodes.2 = $(node 2)
cluster_formation.classic_config.nodes.3 = $(node 3)
cluster_formation.discovery_retry_limit = 2
cluster_formation.discovery_retry_interval = 250
CONF
  echo '[].' >"$d/enabled_plugins"
  # (The node's own directory only: the other nodes write theirs meanwhile.)
  if id rabbitmq >/dev/null 2>&1; then chown rabbitmq "$DIR" && chown -R rabbitmq "$d"; fi
  log "starting $(node "$n") on 127.0.0.1:$(port "$n")"
  RABBITMQ_NODENAME=$(node "$n") RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$(port "$n") \
    RABBITMQ_DIST_PORT=$((25680 + n)) RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
    RABBITMQ_PID_FILE="$d/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    rabbitmq-server -detached >"$d/start.log" 2>&1 || true
  for _ in $(seq 240); do up "$n" && break; sleep 0.25; done
  if ! up "$n"; then
    log "$(node "$n") did not start (see $d); the end of its log:"
    tail -n 20 "$d/start.log" "$d/log/$(node "$n").log" >&2 2>/dev/null || true
    exit 1
  fi
}

# Stops node N as `rabbitmqctl stop` does (SIGTERM is the Erlang VM's orderly shutdown), and
# waits until it is gone.
stop_node() {
  local d="$DIR/rit$1" pid
  pid=$(cat "$d/pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 240); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  log "$(node "$1") did not stop within 60 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
  start)
    all_up=1
    for n in "${NODES[@]}"; do up "$n" || all_up=0; done
    if [ "$all_up" = 0 ]; then
      # A node that was not the last of its cluster to stop waits up to five minutes for the
      # others at its next boot: a test cluster is cheaper to start afresh than to revive.
      for n in "${NODES[@]}"; do stop_node "$n"; done
      rm -rf "$DIR"
    fi
    # The nodes boot side by side and form the cluster themselves (peer discovery from the
    # config: the first to take the discovery lock starts it, the others join), each opening
    # its AMQP listener once it is a member. (Joining by rabbitmqctl took five calls per node,
    # each an Erlang VM of its own.) One call then checks that the three are one cluster.
    pids=()
    for n in "${NODES[@]}"; do start_node "$n" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p"; done
    running=$(ctl 1 cluster_status --formatter json 2>/dev/null \
      | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["running_nodes"]))' || echo 0)
    if [ "$running" != "${#NODES[@]}" ]; then
      log "the nodes did not form one cluster ($running of ${#NODES[@]} running; see $DIR)"
      exit 1
    fi
    url
    ;;
  stop)
    if [ -n "${2:-}" ]; then
      stop_node "$2"
    else
      pids=()
      for n in "${NODES[@]}"; do stop_node "$n" & pids+=($!); done
      for p in "${pids[@]}"; do wait "$p"; done
    fi
    ;;
  leader)
    rabbitmqctl -q -n "$(node 1)" list_queues name leader 2>/dev/null | awk -v q="$2" '$1 == q {print $2}' \
      || true
    ;;
  url) url ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
