#!/usr/bin/env bash
# Priority preemption end to end (issue 32, first part), on the test cluster
# of hosts with the service as a site runs it (tests/hosts/service.sh): one
# worker with one slot runs a long low-priority job; a higher-priority job
# arrives. The low one is stopped (SIGTERM: its rank checkpoints and exits
# 75), requeued without using a restart (it has none), the high one runs and
# succeeds, then the low one resumes from its checkpoint and succeeds.
# `retina status` says who preempted whom, `retina watch` the stop.
# Then the same on host 3's worker, whose checkpoints are slow (3 s between
# writing and committing, fault checkpoint.stall_before_commit_ms) and whose
# grace before SIGKILL is 1 s: the preemption lands in the middle of a
# checkpoint write and the rank is killed there. The half-written
# checkpoint is never used: the victim resumes from the one before, redoes
# those steps, and succeeds with every step once.
#
#   tests/hosts/preemption_hosts_test.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
# shellcheck source=service.sh
source "$here/service.sh"
service_cluster 3
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
retina_on 1 watch "$low" >/dev/null 2>"$work/watch.log" &
watch_pid=$!
wait_for 60 "$low did not start" is "$low" "RUNNING 1"
wait_for 60 "$low wrote no checkpoint" test -e "$store/jobs/$low/checkpoints/LATEST"
t0=$(date +%s.%N)
high=$(retina_on 1 submit "$work/high.yaml" --world-size 1 --max-restarts 0 --priority 5)
wait_for 60 "$high did not start" is "$high" "RUNNING 1"
to_high=$("$python" -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$t0")
# Its first step (the event's time).
first_step() { "$python" -c "
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e['event'] == 'step':
        print(f'{e[\"time\"] - float(sys.argv[2]):.1f}')
        sys.exit(0)
sys.exit(1)" "$store/jobs/$1/events.jsonl" "$2"; }
wait_for 60 "$high took no step" first_step "$high" "$t0"
to_step=$(first_step "$high" "$t0")
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
wait "$watch_pid" || fail "retina watch $low did not end with SUCCEEDED"
grep -q "stopped at step [0-9]* with a checkpoint" "$work/watch.log" || fail "retina watch did not show the stop: $(cat "$work/watch.log")"
grep -q "attempt 1 preempted: $high" "$work/watch.log" || fail "retina watch did not say who preempted $low"
echo "FIGURE high-priority submission -> its first step (preempting $low): $to_step s (RUNNING seen by polling the CLI: $to_high s)"
echo "$low: preempted once by $high, resumed in attempt 2 and SUCCEEDED with max_restarts 0"

# --- a preemption in the middle of a checkpoint write ------------------------
host_kill 2  # its worker is done; the next jobs run on host 3's
wait_for 60 "host 2's worker was not declared lost" grep -q "worker $(host_addr 2) lost" "$work/coordinator.log"
RETINA_FAULTS=checkpoint.stall_before_commit_ms=3000 service_worker 3 --cpu-slots 1 --grace-s 1
job 4 >"$work/low2.yaml"
low2=$(retina_on 1 submit "$work/low2.yaml" --world-size 1 --max-restarts 0)
ckpt=$store/jobs/$low2/checkpoints
wait_for 120 "$low2 committed no first checkpoint" test -e "$ckpt/LATEST"
first=$(cat "$ckpt/LATEST")
wait_for 120 "$low2 did not begin a second checkpoint" grep -q "stalling 3000 ms before committing step 32" \
  "$store/jobs/$low2/logs/attempt-1/rank-0.log"
high2=$(retina_on 1 submit "$work/high.yaml" --world-size 1 --max-restarts 0 --priority 5)
wait_for 60 "$low2 was not stopped" is "$low2" "QUEUED 1"
[[ $(cat "$ckpt/LATEST") == "$first" ]] || fail "$low2: LATEST moved to $(cat "$ckpt/LATEST") though the rank died before committing"
! grep -q "step 32: checkpoint written" "$store/jobs/$low2/logs/attempt-1/rank-0.log" ||
  fail "$low2's rank finished its step-32 checkpoint: the stop did not land in the write"
wait_for 180 "$high2 did not succeed" is "$high2" "SUCCEEDED 1"
wait_for 240 "$low2 did not resume and succeed" is "$low2" "SUCCEEDED 2"
grep -q "resumed from .*$first" "$store/jobs/$low2/logs/attempt-2/rank-0.log" || fail "$low2 attempt 2 did not resume from $first"
leftover=$(find "$ckpt" -maxdepth 1 -name '.tmp-*')
[[ -z $leftover ]] || fail "$low2: the uncommitted checkpoint was left behind: $leftover"
"$python" - "$store/jobs/$low2" <<'PY' || fail "$low2 lost or repeated steps"
import os, sys
steps = [int(l.split(",")[0]) for l in open(os.path.join(sys.argv[1], "metrics.csv")).read().split()[1:]]
assert steps == list(range(1, 65)), f"metrics.csv steps {steps[:3]}..{steps[-3:]} ({len(steps)})"
assert open(os.path.join(sys.argv[1], "checkpoints", "LATEST")).read().strip().endswith("00000064")
PY
echo "$low2: killed 1 s into writing its step-32 checkpoint (uncommitted), resumed from $first, SUCCEEDED with every step once"
echo "PASS"
