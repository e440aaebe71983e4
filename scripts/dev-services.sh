#!/usr/bin/env bash
# Install (if missing) and start the services the integration tests and the demo use, all bound to
# loopback: dockerd (no bridge, no iptables), rabbitmq-server, and moto_server (S3/SQS/DynamoDB).
#
# Idempotent: on a machine where everything already runs it only checks and prints the endpoints.
# Needs root to install packages and to start dockerd.
#
# Environment:
#   REFLOW_SERVICES      space-separated subset of "docker rabbitmq moto registry" (default: all)
#   REFLOW_SERVICES_LOG  directory for service logs (default: /var/log/reflow-agent-dev)
#   MOTO_PORT            port for moto_server (default: 5000)
set -euo pipefail

SERVICES=${REFLOW_SERVICES:-"docker rabbitmq moto registry"}
STATE_DIR=${REFLOW_SERVICES_STATE:-/var/lib/reflow-agent-dev}
# Test-only registry credentials (the registry listens on loopback and holds only test images).
REGISTRY_ADDR=127.0.0.1:5001
REGISTRY_USER=reflow
REGISTRY_PASSWORD=reflow-test
LOG_DIR=${REFLOW_SERVICES_LOG:-/var/log/reflow-agent-dev}
MOTO_PORT=${MOTO_PORT:-5000}
mkdir -p "$LOG_DIR"

log() { printf '[dev-services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

want() { case " $SERVICES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND once a second until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "$what did not become ready within ${secs}s (logs in $LOG_DIR)"
}

APT_UPDATED=0
apt_install() {
  [ "$(id -u)" -eq 0 ] || die "installing $* needs root"
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed (see $LOG_DIR/apt.log)"
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  # policy-rc.d exit 101 keeps package scripts from starting services themselves; we start them below
  # with loopback-only settings.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$LOG_DIR/apt.log" 2>&1 \
    || { [ "$created_policy" -eq 1 ] && rm -f "$policy"; die "apt-get install $* failed (see $LOG_DIR/apt.log)"; }
  if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
}

# --- dockerd -------------------------------------------------------------------------------------
start_docker() {
  if docker info >/dev/null 2>&1; then
    log "docker: already running"
  else
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    command -v docker >/dev/null 2>&1 || apt_install docker-cli || true
    log "docker: starting dockerd (no bridge, no iptables)"
    # setsid: the daemon must survive the shell that started it.
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false \
      >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
    wait_for "dockerd" 60 docker info
  fi
  echo "docker:   unix:///var/run/docker.sock ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
}

# --- rabbitmq ------------------------------------------------------------------------------------
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export ERL_EPMD_ADDRESS=127.0.0.1
RABBITMQ_CONSUMER_TIMEOUT_MS=$(( (36000 + 600) * 1000 ))
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
# A private CA and a server certificate for localhost/127.0.0.1, for the TLS listener on 5671
# (amqps:// tests). Made once; the CA is $TLS_DIR/ca.pem.
TLS_DIR=$STATE_DIR/tls
make_tls() {
  [ -s "$TLS_DIR/server.pem" ] && return 0
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=reflow-agent test CA" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$TLS_DIR/ext.cnf"
  openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 3650 -extfile "$TLS_DIR/ext.cnf" -out "$TLS_DIR/server.pem" 2>/dev/null
  if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq "$TLS_DIR"; fi
  chmod 0644 "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem"
  chmod 0600 "$TLS_DIR/ca.key" "$TLS_DIR/server.key"
}

# A client certificate from the same CA, as PKCS#12 with a password (client.p12,
# client.p12.pass): the TLS listener requires one, as a broker that verifies its clients does.
make_client_tls() {
  [ -s "$TLS_DIR/client.p12" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "/CN=reflow-agent test client" \
    -keyout "$TLS_DIR/client.key" -out "$TLS_DIR/client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$TLS_DIR/client-ext.cnf"
  openssl x509 -req -in "$TLS_DIR/client.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 3650 -extfile "$TLS_DIR/client-ext.cnf" -out "$TLS_DIR/client.pem" 2>/dev/null
  openssl rand -hex 12 >"$TLS_DIR/client.p12.pass"
  openssl pkcs12 -export -in "$TLS_DIR/client.pem" -inkey "$TLS_DIR/client.key" \
    -passout "file:$TLS_DIR/client.p12.pass" -out "$TLS_DIR/client.p12"
  chmod 0600 "$TLS_DIR/client.key" "$TLS_DIR/client.p12" "$TLS_DIR/client.p12.pass"
}

# rabbitmq.conf: the broker-wide consumer timeout (see below) and the TLS listener. Prints
# "changed" when it wrote something a running node has to restart for.
rabbitmq_conf() {
  local conf=/etc/rabbitmq/rabbitmq.conf changed=0
  mkdir -p /etc/rabbitmq
  if ! grep -qs '^consumer_timeout' "$conf"; then
    echo "consumer_timeout = $RABBITMQ_CONSUMER_TIMEOUT_MS" >>"$conf"
  fi
  if ! grep -qs '^listeners.ssl.default' "$conf"; then
    {
      echo "listeners.ssl.default = 127.0.0.1:5671"
      echo "ssl_options.cacertfile = $TLS_DIR/ca.pem"
      echo "ssl_options.certfile = $TLS_DIR/server.pem"
      echo "ssl_options.keyfile = $TLS_DIR/server.key"
      echo "ssl_options.verify = verify_peer"
      echo "ssl_options.fail_if_no_peer_cert = true"
    } >>"$conf"
    changed=1
  fi
  # Earlier versions of this script did not verify clients.
  if grep -qs '^ssl_options.verify = verify_none' "$conf"; then
    sed -i -e 's/^ssl_options.verify = verify_none/ssl_options.verify = verify_peer/' \
      -e 's/^ssl_options.fail_if_no_peer_cert = false/ssl_options.fail_if_no_peer_cert = true/' "$conf"
    changed=1
  fi
  # The open-files limit. Debian's unit gives the broker 65536 (LimitNOFILE); started from a
  # shell, it goes through `su rabbitmq`, whose PAM session resets the soft limit to 1024.
  # RabbitMQ budgets its file handles from that limit, and once they are used up a new
  # connection waits for one without a word in the log: at 1024, about 340 quorum queues (two
  # or three full test runs in one vhost) used all 927, and the broker accepted no connection.
  # rabbitmq-env.conf is sourced, as the rabbitmq user, by every start (the test cluster's too).
  local env_conf=/etc/rabbitmq/rabbitmq-env.conf
  if ! grep -qs '^ulimit -n' "$env_conf"; then
    # (Up to the hard limit, which an unprivileged user may raise the soft one to.)
    echo 'ulimit -n "$(n=$(ulimit -Hn); [ "$n" = unlimited ] || [ "$n" -gt 65536 ] && n=65536; echo "$n")" 2>/dev/null || true' >>"$env_conf"
    changed=1
  fi
  if [ "$changed" = 1 ]; then echo changed; fi
}

start_rabbitmq() {
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  make_tls
  make_client_tls
  if [ "$(rabbitmq_conf)" = changed ] && rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    log "rabbitmq: restarting for its TLS listener or its open-files limit"
    rabbitmqctl -q stop >/dev/null 2>&1 || true
  fi
  if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    log "rabbitmq: already running"
  else
    log "rabbitmq: starting rabbitmq-server on 127.0.0.1"
    # Debian's package may leave the node owned by the rabbitmq user; run it as that user when it exists.
    if id rabbitmq >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
      mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
      chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
    fi
    rabbitmq-server -detached >"$LOG_DIR/rabbitmq.log" 2>&1 || true
    wait_for "rabbitmq" 120 rabbitmqctl await_startup
  fi
  # The agent holds a job's delivery until its outcome is durable. RabbitMQ before 3.12 ignores
  # the queues' x-consumer-timeout, so the broker-wide consumer_timeout must cover the longest
  # job: queue.max_job_secs (default 36000) plus 10 minutes (docs/protocol.md). Set for the
  # running node (new channels); rabbitmq_conf wrote it to rabbitmq.conf for the next start.
  rabbitmqctl -q eval "application:set_env(rabbit, consumer_timeout, $RABBITMQ_CONSUMER_TIMEOUT_MS)." >/dev/null
  wait_for "rabbitmq TLS listener" 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5671'
  echo "rabbitmq: amqp://guest:guest@127.0.0.1:5672/%2f, amqps://guest:guest@localhost:5671/%2f (CA $TLS_DIR/ca.pem, client $TLS_DIR/client.p12)"
}

# --- moto ----------------------------------------------------------------------------------------
moto_up() { curl -fs -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" 2>/dev/null; }
# 5.2.5 or later: 5.2.1's CompleteMultipartUpload answers with a root element the Rust SDK rejects.
MOTO_MIN=5.2.5
moto_recent() {
  python3 - "$MOTO_MIN" <<'PY' 2>/dev/null
import sys, moto
have = tuple(int(x) for x in moto.__version__.split(".")[:3] if x.isdigit())
want = tuple(int(x) for x in sys.argv[1].split("."))
sys.exit(0 if have >= want else 1)
PY
}
start_moto() {
  command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
  if moto_up; then
    log "moto: already running"
  else
    if ! command -v moto_server >/dev/null 2>&1 || ! moto_recent; then
      log "moto: pip install moto[server]>=$MOTO_MIN"
      python3 -m pip install -q "moto[server]>=$MOTO_MIN" >"$LOG_DIR/pip.log" 2>&1 || die "pip install moto failed (see $LOG_DIR/pip.log)"
      hash -r
    fi
    log "moto: starting moto_server on 127.0.0.1:$MOTO_PORT"
    setsid nohup moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$LOG_DIR/moto.log" 2>&1 </dev/null &
    wait_for "moto_server" 60 moto_up
  fi
  echo "moto:     http://127.0.0.1:$MOTO_PORT (S3 path-style, SQS, DynamoDB)"
}

# --- docker-registry (htpasswd auth, loopback) ---------------------------------------------------
registry_up() { curl -s -o /dev/null -w '%{http_code}' "http://$REGISTRY_ADDR/v2/" 2>/dev/null | grep -q 401; }
start_registry() {
  command -v docker-registry >/dev/null 2>&1 || apt_install docker-registry
  command -v htpasswd >/dev/null 2>&1 || apt_install apache2-utils
  local dir=$STATE_DIR/registry
  mkdir -p "$dir/data"
  if registry_up; then
    log "registry: already running"
  else
    htpasswd -Bbc "$dir/htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" >/dev/null 2>&1
    cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
auth:
  htpasswd:
    realm: reflow-agent-test
    path: $dir/htpasswd
YAML
    log "registry: starting docker-registry on $REGISTRY_ADDR (htpasswd auth)"
    setsid nohup docker-registry serve "$dir/config.yml" >"$LOG_DIR/registry.log" 2>&1 </dev/null &
    wait_for "docker-registry" 30 registry_up
  fi
  echo "registry: http://$REGISTRY_ADDR (user $REGISTRY_USER; test-only)"
}

# Pushes the offline test image to the local registry, with a throwaway docker config so the
# user's own credentials are never touched.
push_test_image() {
  local image=${REFLOW_TEST_IMAGE:-reflow-agent-test/busybox:1}
  local remote=$REGISTRY_ADDR/$image
  docker image inspect "$image" >/dev/null 2>&1 || bash "$(dirname "$0")/test-image.sh" >/dev/null
  local cfg; cfg=$(mktemp -d)
  DOCKER_CONFIG=$cfg docker login -u "$REGISTRY_USER" --password-stdin "$REGISTRY_ADDR" <<<"$REGISTRY_PASSWORD" >/dev/null 2>&1 \
    || { rm -rf "$cfg"; die "docker login to $REGISTRY_ADDR failed"; }
  docker tag "$image" "$remote"
  DOCKER_CONFIG=$cfg docker push "$remote" >"$LOG_DIR/registry-push.log" 2>&1 \
    || { rm -rf "$cfg"; die "docker push $remote failed (see $LOG_DIR/registry-push.log)"; }
  rm -rf "$cfg"
  echo "registry: pushed $remote"
}

# The Python producer's libraries (tests/py/): pika for AMQP, jcs (RFC 8785) for signing.
python_libs() {
  if python3 -c 'import jcs, pika' >/dev/null 2>&1; then return 0; fi
  log "python: pip install jcs pika"
  python3 -m pip install -q jcs pika >"$LOG_DIR/pip-producer.log" 2>&1 \
    || die "pip install jcs pika failed (see $LOG_DIR/pip-producer.log)"
}

want docker && start_docker
want rabbitmq && start_rabbitmq && python_libs
# promtool (Debian's prometheus package; its service is not started) checks the alert rules and
# a live agent's /metrics.
if ! command -v promtool >/dev/null 2>&1; then apt_install prometheus; fi
want moto && start_moto
if want registry; then
  start_registry
  want docker && push_test_image
fi
exit 0
