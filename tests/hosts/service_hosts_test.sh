#!/usr/bin/env bash
# The job service across hosts (issue 31): the coordinator on host 1
# (198.18.0.1, TLS with a certificate naming that address, tokens:
# tests/hosts/service.sh), a worker on each of hosts 2 and 3, the client on
# host 3, the store shared on the filesystem as NFS would be.
#   1. a 1-rank job runs on a worker reached only through its advertised
#      address; its rendezvous (MASTER_ADDR) is that host's address;
#   2. a 2-rank gang spans hosts 2 and 3 over Gloo: each rank binds its
#      worker's advertised address (RETINA_HOST_ADDR), not what the hostname
#      resolves to (loopback here: the peer was told to dial 127.0.0.1);
#   3. an infer job over 3 hosts (a worker on host 1 too) writes OME-Zarr
#      labels and probabilities equal, chunk for chunk, to one process's.
#
#   tests/hosts/service_hosts_test.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
# shellcheck source=service.sh
source "$here/service.sh"
service_cluster 3
service_em_dataset
printf 'kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\nruntime: {threads: 1}\npretrain: {epochs: 1, global_batch: 4}\n' \
  >"$work/job.yaml"

service_coordinator
service_worker 2 --cpu-slots 1
service_worker 3 --cpu-slots 1
retina() { retina_on 3 "$@"; }
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
echo "$id: 1 rank on $addr (rendezvous $addr:$(field "d['masterPort']")), coordinator $service_address (TLS), client on $(host_addr 3): SUCCEEDED"

id=$(retina submit "$work/job.yaml" --world-size 2 --max-restarts 0 --watch 2>"$work/watch2.log") ||
  fail "the 2-host gang did not succeed: $(retina status "$id" 2>&1 | grep message)"
job=$(retina status "$id" --json)
hosts=$(field "' '.join(sorted(p['host'] for p in d['placement']))")
[[ $hosts == "$(host_addr 2) $(host_addr 3)" ]] || fail "$id: ranks on [$hosts], not one on each host"
[[ $(field "d['attempt']") == 1 ]] || fail "$id: $(field "d['attempt']") attempts"
grep -q "rank 1 of 2" "$store/jobs/$id/logs/attempt-1/rank-1.log" || fail "$id: rank 1 did not run"
echo "$id: 2 ranks over Gloo on $hosts (rendezvous $(field "d['masterAddr']"):$(field "d['masterPort']")): SUCCEEDED"

# 3. An infer job over 3 hosts writes the OME-Zarr of one process.
service_worker 1 --cpu-slots 1
mkdir -p "$store/models/seg" "$store/volumes"
"$build/trainer/retina-train" model init --model tiny --classes 2 --seed 1 --out "$store/models/seg/model.pt" >/dev/null
"$build/trainer/retina-synth" benchmark --out "$work/bench" --train 1 --test 1 --shape 6,64,64 >/dev/null
cp "$work/bench/train/images/vol0.tif" "$store/volumes/vol.tif"
printf 'kind: infer\nruntime: {threads: 1}\ndata: {mean: 0.5, std: 0.25}\ninfer: {weights: models/seg/model.pt, inputs: [volumes/vol.tif], mode: orthoplane, chunks: [2, 32, 32], probabilities: float32, overlap: 0.5}\n' \
  >"$work/infer.yaml"
OMP_NUM_THREADS=1 "$build/trainer/retina-train" run --config "$work/infer.yaml" --store "$store" --job one >"$work/one.log" 2>&1 ||
  fail "the one-process infer run failed"
id=$(retina submit "$work/infer.yaml" --world-size 3 --max-restarts 0 --watch 2>"$work/watch3.log") ||
  fail "the 3-host infer job did not succeed: $(retina status "$id" 2>&1 | grep message)"
job=$(retina status "$id" --json)
hosts=$(field "' '.join(sorted(p['host'] for p in d['placement']))")
[[ $hosts == "$(host_addr 1) $(host_addr 2) $(host_addr 3)" ]] || fail "$id: ranks on [$hosts], not one on each host"
for out in vol.ome.zarr vol.probabilities.ome.zarr; do
  chunks=$(find "$store/jobs/$id/predictions/$out/0" -type f 2>/dev/null | wc -l)
  ((chunks > 1)) || fail "$id: $out has no chunks"
  diff -r "$store/jobs/one/predictions/$out/0" "$store/jobs/$id/predictions/$out/0" >/dev/null ||
    fail "$id: $out differs from one process's"
done
echo "$id: infer over 3 hosts ($hosts): labels and probabilities equal one process's, chunk for chunk"
echo "PASS"
