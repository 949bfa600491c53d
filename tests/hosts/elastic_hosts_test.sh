#!/usr/bin/env bash
# Elastic gangs end to end (issue 32), on the test cluster of hosts with the
# service as a site runs it (tests/hosts/service.sh; TLS and tokens on).
# A pre-training job of 2 ranks, minimum 1, max_restarts 1, on the workers
# of hosts 2 and 3 (one slot each):
#   1. host 3 crashes mid-job (every process on it SIGKILLed): within a
#      lease plus a restart the job trains again on host 2 alone, with 2
#      micro-batches per step (the global batch kept), from its checkpoint;
#   2. host 3's worker comes back: once the shrunk attempt has run
#      --elastic-grow-after-s the job is stopped (checkpoint, exit 75) to
#      grow, and the coordinator is SIGKILLed and restarted in that moment;
#      the growth still uses no restart (Job.stopping) and the job finishes
#      on 2 ranks again.
# Nothing lost: every step appears once in metrics.csv, the last checkpoint
# is the last step, the restart budget (1) was used by the crash alone.
# `retina watch` shows both resizes, `retina status` the elastic line,
# Prometheus retina_resizes_total. Figures: from the crash to training
# again, steps redone, and the shrunk job's throughput against the full one.
#
#   tests/hosts/elastic_hosts_test.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
# shellcheck source=service.sh
source "$here/service.sh"
service_cluster 3
service_em_dataset
lease=6
grow_after=8
coordinator_args=(--lease-s $lease --heartbeat-s 0.5 --elastic-grow-after-s $grow_after)
# 64 samples, 4 per step: 16 steps an epoch, a checkpoint each epoch.
printf 'kind: pretrain\nseed: 1\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\nruntime: {threads: 1, collective_timeout_s: 30}\npretrain: {epochs: 10, global_batch: 4, checkpoint_every_epochs: 1}\n' >"$work/elastic.yaml"
service_coordinator "${coordinator_args[@]}"
service_worker 2 --cpu-slots 1
service_worker 3 --cpu-slots 1
at() { job_field 1 "$job" "d['state'] + ' ' + str(d['attempt']) + ' ' + str(d['attemptWorldSize'])"; }
is() { [[ $(at) == "$1" ]]; }
now() { date +%s.%N; }
since() { "$python" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

job=$(retina_on 1 submit "$work/elastic.yaml" --world-size 2 --min-world-size 1 --max-restarts 1)
retina_on 1 watch "$job" >/dev/null 2>"$work/watch.log" &
watch_pid=$!
wait_for 60 "$job did not start on 2 ranks" is "RUNNING 1 2"
events=$store/jobs/$job/events.jsonl
wait_for 120 "$job wrote no checkpoint" test -e "$store/jobs/$job/checkpoints/LATEST"

# --- 1. host 3 crashes: the job goes on with 1 rank -------------------------
wait_for 60 "$job did not train past its first checkpoint" \
  "$python" -c "import sys; rows = open(sys.argv[1]).read().split(); sys.exit(len(rows) < 20)" "$store/jobs/$job/metrics.csv"
t_crash=$(now)
host_kill 3
last_before=$(tail -n 1 "$store/jobs/$job/metrics.csv" | cut -d, -f1)
wait_for 60 "$job did not restart on the rank left: $(at)" is "RUNNING 2 1"
wait_for 60 "$job recorded no resize to 1 rank" grep -q '"event":"resized".*"to_world":1' "$events"
# The first step after the resize (its event time) is training again:
# "TIME RESUMED_STEP", or exit 1 while there is none.
small_step() {
  "$python" - "$events" <<'PY'
import json, sys
seen = None
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == "resized" and e["to_world"] == 1:
        seen = e
    elif seen and e["event"] == "step":
        print(e["time"], seen["step"])
        sys.exit(0)
sys.exit(1)
PY
}
wait_for 60 "$job took no step on 1 rank" small_step
read -r t_small resumed_at <<<"$(small_step)"
message=$(job_field 1 "$job" "d['message']")
[[ $message == *"resized: 2 -> 1 ranks, accumulation 1 -> 2"* ]] || fail "$job's message does not say it shrank: $message"
echo "FIGURE host crash -> training again on 1 rank: $(since "$t_crash" "$t_small") s (lease $lease s)"
echo "FIGURE steps redone: $((last_before - resumed_at)) (last step $last_before before the crash, resumed at $resumed_at)"

# --- 2. host 3 returns: the job grows back; the coordinator dies meanwhile --
service_worker 3 --cpu-slots 1
wait_for $((grow_after + 30)) "$job was not stopped to grow" grep -q "growing $job" "$work/coordinator.log"
service_coordinator_restart "${coordinator_args[@]}"
wait_for 120 "$job did not grow back to 2 ranks: $(at)" is "RUNNING 3 2"
wait_for 60 "$job recorded no resize to 2 ranks" grep -q '"event":"resized".*"to_world":2' "$events"
status=$(retina_on 1 status "$job")
[[ $status == *"elastic:     min 1; running on 2 rank(s), accumulation 1; resized 2 time(s), stopped to grow 1 time(s)"* ]] ||
  fail "retina status $job lacks the elastic line: $status"
wait_for 300 "$job did not succeed: $(at)" is "SUCCEEDED 3 2"
wait "$watch_pid" || fail "retina watch $job did not end with SUCCEEDED"

# --- nothing lost -------------------------------------------------------------
"$python" - "$store/jobs/$job" <<'PY' || fail "$job lost or repeated steps"
import json, os, sys
job = sys.argv[1]
steps = [int(l.split(",")[0]) for l in open(os.path.join(job, "metrics.csv")).read().split()[1:]]
assert steps == list(range(1, 161)), f"metrics.csv steps {steps[:3]}..{steps[-3:]} ({len(steps)})"
latest = open(os.path.join(job, "checkpoints", "LATEST")).read().strip()
assert latest.endswith("00000160"), f"LATEST is {latest}"
PY
grep -q "resized at step .*: 2 -> 1 ranks, accumulation 1 -> 2" "$work/watch.log" || fail "retina watch did not show the shrink: $(cat "$work/watch.log")"
grep -q "resized at step .*: 1 -> 2 ranks, accumulation 2 -> 1" "$work/watch.log" || fail "retina watch did not show the growth"
[[ $(service_metric 'retina_resizes_total{direction="grow"}') == 1.0 ]] || fail "retina_resizes_total{direction=\"grow\"} is not 1 after the restart"
ratio=$("$python" - "$events" <<'PY'
import json, sys
world, rate = 0, {1: [], 2: []}
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == "start":
        world = e["world_size"]
    elif e["event"] == "step" and world in rate:
        rate[world].append(e["images_per_s"])
mean = {w: sorted(r)[len(r) // 2] for w, r in rate.items() if r}
print(f"{mean[1] / mean[2]:.2f} ({mean[1]:.1f} vs {mean[2]:.1f} images/s, medians)")
PY
)
echo "FIGURE throughput on 1 rank relative to 2 ranks (this machine's 2 cores): $ratio"
echo "$job: shrank 2 -> 1 after host 3 crashed, grew 1 -> 2 through a coordinator restart, SUCCEEDED with every step once"
echo "PASS"
