#!/usr/bin/env bash
# Priority preemption end to end (issue 32, first part), on the test cluster
# of hosts with the service as a site runs it (tests/hosts/service.sh): one
# worker with one slot runs a long low-priority job; a higher-priority job
# arrives. The low one is stopped (SIGTERM: its rank checkpoints and exits
# 75), requeued without using a restart (it has none), the high one runs and
# succeeds, then the low one resumes from its checkpoint and succeeds.
# `retina status` says who preempted whom.
#
#   tests/hosts/preemption_hosts_test.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
# shellcheck source=service.sh
source "$here/service.sh"
service_cluster 2
service_em_dataset
job() {  # EPOCHS
  printf 'kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\nruntime: {threads: 1}\npretrain: {epochs: %s, global_batch: 4, checkpoint_every_epochs: 1}\n' "$1"
}
job 8 >"$work/low.yaml"
job 1 >"$work/high.yaml"
service_coordinator --preempt-min-run-s 0
service_worker 2 --cpu-slots 1
state() { job_field 1 "$1" "d['state'] + ' ' + str(d['attempt'])"; }
is() { [[ $(state "$1") == "$2" ]]; }

low=$(retina_on 1 submit "$work/low.yaml" --world-size 1 --max-restarts 0)
wait_for 60 "$low did not start" is "$low" "RUNNING 1"
wait_for 60 "$low wrote no checkpoint" test -e "$store/jobs/$low/checkpoints/LATEST"
t0=$(date +%s.%N)
high=$(retina_on 1 submit "$work/high.yaml" --world-size 1 --max-restarts 0 --priority 5)
wait_for 60 "$high did not start" is "$high" "RUNNING 1"
to_high=$("$python" -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$t0")
# The low job's rank 0 wrote a checkpoint on SIGTERM and said so.
wait_for 30 "$low did not record its preemption checkpoint" grep -q '"event":"preempted"' "$store/jobs/$low/events.jsonl"
status=$(retina_on 1 status "$low")
[[ $status == *"preempted:   1 time(s)"* ]] || fail "retina status $low does not say it was preempted: $status"
[[ $status == *"attempt 1 preempted: $high (priority 5) needed its slots"* ]] || fail "the message does not name $high: $status"
wait_for 120 "$high did not succeed" is "$high" "SUCCEEDED 1"
wait_for 180 "$low did not resume and succeed" is "$low" "SUCCEEDED 2"
grep -q "resumed from" "$store/jobs/$low/logs/attempt-2/rank-0.log" || fail "$low attempt 2 did not resume from a checkpoint"
counted=$(service_metric retina_preemptions_total)
[[ $counted == 1.0 ]] || fail "retina_preemptions_total is $counted"
echo "FIGURE high-priority submission -> its rank running (preempting $low): $to_high s"
echo "$low: preempted once by $high, resumed in attempt 2 and SUCCEEDED with max_restarts 0"
echo "PASS"
