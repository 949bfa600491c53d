#!/usr/bin/env bash
# The job service on the test cluster of hosts (tests/hosts/hosts.sh), as a
# site would run it: TLS with a test CA and a certificate naming the
# coordinator's host address (198.18.0.1), a worker token, a user token.
#
#   build=BUILD_DIR; source tests/hosts/service.sh
#   service_cluster 3                      # hosts 1..3, $work; skips (77) without the services
#   service_em_dataset                     # $store (= $work/store) with datasets/em
#   service_coordinator [ARGS...]          # on host 1 at 198.18.0.1:50051
#   service_coordinator_restart [ARGS...]  # SIGKILL it and start it again (same db, TLS)
#   service_worker I [ARGS...]             # a worker on host I (--host its address),
#                                          # dialing $worker_dial if set (a relay)
#   retina_on I ARGS...                    # the CLI, run on host I as user alice
#   service_metric NAME_AND_LABELS         # a value from the coordinator's /metrics
# Logs: $work/coordinator.log, $work/worker<I>.log.
set -euo pipefail
# shellcheck source=hosts.sh
source "$(dirname "${BASH_SOURCE[0]}")/hosts.sh"

service_address=$(host_addr 1):50051
python=${RETINA_PYTHON3:-/usr/bin/python3}

service_cluster() {  # N
  [[ -x $build/services/retina-coordinator ]] || { echo "SKIP: the services are not built"; exit 77; }
  hosts_up "$1"
  hosts_work
}

# $work/store with datasets/em: 16 synthetic images as 64 patches of 64x64.
service_em_dataset() {
  store=$work/store
  "$build/trainer/retina-synth" images --out "$work/raw" --count 16 --size 96 >/dev/null
  "$build/trainer/retina-shard" pack --input "$work/raw" --out "$store/datasets/em" --size 64 --shard-images 64 >/dev/null
}

# wait_for SECONDS WHAT CMD...: polls CMD every 0.2 s; fails saying WHAT.
wait_for() {
  local seconds=$1 what=$2 end=$(($(date +%s) + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < end)) || fail "after $seconds s: $what"
    sleep 0.2
  done
}

# A CA and a server certificate for 198.18.0.1 (and nothing else).
_service_tls() {
  command -v openssl >/dev/null || { echo "SKIP: no openssl for the test CA"; exit 77; }
  (
    cd "$work"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=hosts-test-ca
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=$(host_addr 1)"
    printf 'subjectAltName=IP:%s' "$(host_addr 1)" >san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext
  ) >"$work/openssl.log" 2>&1 || fail "openssl could not make the test CA"
  echo "worker-token-$RANDOM$RANDOM$RANDOM" >"$work/worker.token"
  echo "alice-token-$RANDOM$RANDOM$RANDOM" >"$work/alice.token"
  echo "$(cat "$work/alice.token") alice" >"$work/client.tokens"
  chmod 600 "$work/worker.token" "$work/alice.token" "$work/client.tokens" "$work/server.key"
}

service_coordinator() {
  _service_tls
  _service_coordinator_start "$@"
}

# SIGKILL the coordinator (nothing else on host 1) and start it again over
# the same database, store and TLS files, with ARGS.
service_coordinator_restart() {  # [ARGS...]
  local pid
  for pid in $(ip netns pids "$(host_ns 1)"); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == retina-coordin* ]] && kill -9 "$pid"
  done
  rm -f "$work/coordinator.ready"
  _service_coordinator_start "$@"
}

_service_coordinator_start() {
  host_exec 1 "$build/services/retina-coordinator" --listen "$service_address" --metrics-listen "$(host_addr 1):9464" \
    --db "$work/jobs.db" --store "$work/store" --ready-file "$work/coordinator.ready" \
    --tls-cert "$work/server.pem" --tls-key "$work/server.key" --client-tokens "$work/client.tokens" \
    --worker-token "$work/worker.token" "$@" >>"$work/coordinator.log" 2>&1 &
  for _ in $(seq 100); do [[ -s $work/coordinator.ready ]] && return 0; sleep 0.1; done
  fail "the coordinator did not start on host 1"
}

service_worker() {  # I [ARGS...]
  local i=$1
  shift
  rm -f "$work/worker$i.ready"
  host_exec "$i" "$build/services/retina-worker" --coordinator "${worker_dial:-$service_address}" --host "$(host_addr "$i")" \
    --ca "$work/ca.pem" --token-file "$work/worker.token" --store "$work/store" \
    --ready-file "$work/worker$i.ready" "$@" >>"$work/worker$i.log" 2>&1 &
  for _ in $(seq 100); do [[ -s $work/worker$i.ready ]] && return 0; sleep 0.1; done
  fail "the worker on host $i did not register"
}

retina_on() {  # I ARGS...
  local i=$1
  shift
  host_exec "$i" env RETINA_ADDRESS="$service_address" RETINA_CA="$work/ca.pem" RETINA_TOKEN="$(cat "$work/alice.token")" \
    "$build/services/retina" "$@"
}

# A field of `retina status ID --json` (a Python expression over d).
job_field() {  # I ID EXPR
  retina_on "$1" status "$2" --json | "$python" -c "import json, sys; d = json.load(sys.stdin); print($3)"
}

service_metric() {  # 'retina_gang_failures_total{cause="collective_timeout"}'
  host_exec 1 "$python" - "$1" <<'PY'
import sys, urllib.request
want = sys.argv[1]
for line in urllib.request.urlopen("http://198.18.0.1:9464/metrics", timeout=10).read().decode().splitlines():
    if line.startswith(want + " "):
        print(float(line.split()[-1]))
        break
else:
    print("absent")
PY
}
