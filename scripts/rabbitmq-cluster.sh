#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on loopback, beside the dev broker (scripts/dev-services.sh installs
# RabbitMQ): nodes rit1..rit3@localhost, AMQP on 127.0.0.1:5681..5683, state under
# $REFLOW_CLUSTER_DIR (default /var/lib/reflow-agent-dev/cluster). Idempotent.
#
#   scripts/rabbitmq-cluster.sh start          start the nodes and join them (prints the URL);
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
  ctl "$n" await_startup
}

case "${1:-}" in
  start)
    all_up=1
    for n in "${NODES[@]}"; do up "$n" || all_up=0; done
    if [ "$all_up" = 0 ]; then
      # A node that was not the last of its cluster to stop waits up to five minutes for the
      # others at its next boot: a test cluster is cheaper to start afresh than to revive.
      for n in "${NODES[@]}"; do ctl "$n" stop >/dev/null 2>&1 || true; done
      rm -rf "$DIR"
    fi
    # The nodes boot side by side, then join one at a time.
    pids=()
    for n in "${NODES[@]}"; do start_node "$n" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p"; done
    for n in 2 3; do
      if ! ctl "$n" cluster_status 2>/dev/null | grep -q "$(node 1)"; then
        log "joining $(node "$n") to $(node 1)"
        { ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster "$(node 1)" && ctl "$n" start_app; } \
          >"$DIR/rit$n/join.log" 2>&1 || { log "joining failed (see $DIR/rit$n/join.log)"; exit 1; }
      fi
    done
    url
    ;;
  stop)
    if [ -n "${2:-}" ]; then
      ctl "$2" stop >/dev/null 2>&1 || true
    else
      for n in "${NODES[@]}"; do ctl "$n" stop >/dev/null 2>&1 || true; done
    fi
    ;;
  leader)
    rabbitmqctl -q -n "$(node 1)" list_queues name leader 2>/dev/null | awk -v q="$2" '$1 == q {print $2}' \
      || true
    ;;
  url) url ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
