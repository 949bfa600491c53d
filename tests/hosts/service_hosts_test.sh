#!/usr/bin/env bash
# The job service across hosts (issue 31, first step): the coordinator on
# host 1 (198.18.0.1), a worker on each of hosts 2 and 3, the client on
# host 3, the store shared on the filesystem as NFS would be.
#   1. a 1-rank job runs on a worker reached only through its advertised
#      address; its rendezvous (MASTER_ADDR) is that host's address;
#   2. a 2-rank gang spans hosts 2 and 3 over Gloo: each rank binds its
#      worker's advertised address (RETINA_HOST_ADDR), not what the hostname
#      resolves to (loopback here: the peer was told to dial 127.0.0.1).
#
#   tests/hosts/service_hosts_test.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
python=${RETINA_PYTHON3:-/usr/bin/python3}
[[ -x $build/services/retina-coordinator ]] || { echo "SKIP: the services are not built"; exit 77; }
# shellcheck source=hosts.sh
source "$here/hosts.sh"
hosts_up 3
hosts_work
store=$work/store
"$build/trainer/retina-synth" images --out "$work/raw" --count 16 --size 96 >/dev/null
"$build/trainer/retina-shard" pack --input "$work/raw" --out "$store/datasets/em" --size 64 --shard-images 64 >/dev/null
printf 'kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\nruntime: {threads: 1}\npretrain: {epochs: 1, global_batch: 4}\n' \
  >"$work/job.yaml"

coordinator=$(host_addr 1):50051
host_exec 1 "$build/services/retina-coordinator" --listen "$coordinator" --metrics-listen "$(host_addr 1):0" \
  --db "$work/jobs.db" --store "$store" --ready-file "$work/coordinator.ready" >"$work/coordinator.log" 2>&1 &
for _ in $(seq 100); do [[ -s $work/coordinator.ready ]] && break; sleep 0.1; done
[[ -s $work/coordinator.ready ]] || fail "the coordinator did not start on host 1"
for i in 2 3; do
  host_exec "$i" "$build/services/retina-worker" --coordinator "$coordinator" --host "$(host_addr "$i")" \
    --cpu-slots 1 --store "$store" --ready-file "$work/worker$i.ready" >"$work/worker$i.log" 2>&1 &
done
for _ in $(seq 100); do [[ -s $work/worker2.ready && -s $work/worker3.ready ]] && break; sleep 0.1; done
[[ -s $work/worker2.ready && -s $work/worker3.ready ]] || fail "the workers did not register from hosts 2 and 3"
retina() { host_exec 3 env RETINA_ADDRESS="$coordinator" "$build/services/retina" "$@"; }
workers=$(retina workers --json | "$python" -c "import json, sys; print(' '.join(sorted(w['host'] for w in json.load(sys.stdin)['workers'])))")
[[ $workers == "$(host_addr 2) $(host_addr 3)" ]] || fail "workers seen at [$workers]"

id=$(retina submit "$work/job.yaml" --world-size 1 --watch 2>"$work/watch.log") || fail "the job did not succeed"
job=$(retina status "$id" --json)
field() { echo "$job" | "$python" -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
[[ $(field "d['state']") == SUCCEEDED ]] || fail "$id: $(field "d['state']")"
addr=$(field "d['masterAddr']")
[[ $addr == "$(host_addr 2)" || $addr == "$(host_addr 3)" ]] || fail "$id: MASTER_ADDR $addr, not a worker host's address"
[[ $(field "d['placement'][0]['host']") == "$addr" ]] || fail "$id: rank 0 placed on $(field "d['placement'][0]['host']"), rendezvous $addr"
[[ -e $store/jobs/$id/checkpoints/LATEST ]] || fail "$id: no checkpoint in the shared store"
echo "$id: 1 rank on $addr (rendezvous $addr:$(field "d['masterPort']")), coordinator $coordinator, client on $(host_addr 3): SUCCEEDED"

id=$(retina submit "$work/job.yaml" --world-size 2 --max-restarts 0 --watch 2>"$work/watch2.log") ||
  fail "the 2-host gang did not succeed: $(retina status "$id" 2>&1 | grep message)"
job=$(retina status "$id" --json)
hosts=$(field "' '.join(sorted(p['host'] for p in d['placement']))")
[[ $hosts == "$(host_addr 2) $(host_addr 3)" ]] || fail "$id: ranks on [$hosts], not one on each host"
[[ $(field "d['attempt']") == 1 ]] || fail "$id: $(field "d['attempt']") attempts"
grep -q "rank 1 of 2" "$store/jobs/$id/logs/attempt-1/rank-1.log" || fail "$id: rank 1 did not run"
echo "$id: 2 ranks over Gloo on $hosts (rendezvous $(field "d['masterAddr']"):$(field "d['masterPort']")): SUCCEEDED"
echo "PASS"
