#!/usr/bin/env bash
# The coordinator's Slurm executor (--executor slurm) on a real Slurm: the
# localhost munged + slurmctld + slurmd of slurm_cluster.sh, the real
# retina-coordinator and the retina CLI; every Slurm job is an sbatch of
# deploy/slurm/retina-slurm.sh whose ranks (srun, Gloo) write to the store.
#   1. submit through the API -> sbatch -> 2 ranks -> SUCCEEDED, with the
#      Slurm job id on the job, progress watched from rank 0's events,
#      metrics and checkpoints in the store;
#   2. scancel from outside -> CANCELLED, the message says so;
#   3. scontrol requeue -> attempt 2 of the same Slurm job resumes from LATEST;
#   4. coordinator SIGKILL while the Slurm job runs -> the restarted
#      coordinator re-attaches (attempt 1, same Slurm job) and it finishes;
#   5. cancel through the API -> scancel issued -> CANCELLED in both.
# Exit 77 (ctest: skipped) with the reason when Slurm cannot start here.
#
#   tests/deploy/slurm_service_test.sh BUILD_DIR
set -euo pipefail
# shellcheck source=slurm_cluster.sh
source "$(dirname "$0")/slurm_cluster.sh" "$@"
SVC=$BUILD_DIR/services
STORE=$WORK/store
[[ -x $SVC/retina-coordinator ]] || skip "the services are not built (RETINA_BUILD_SERVICES=OFF)"
"$BIN/retina-synth" images --out "$WORK/raw" --count 32 --size 96 >/dev/null
"$BIN/retina-shard" pack --input "$WORK/raw" --out "$STORE/datasets/em" --size 64 --shard-images 64 >/dev/null
job_yaml() {  # EPOCHS
  printf 'kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\n'
  printf 'runtime: {threads: 1}\noptimizer: {lr: 0.01}\npretrain: {epochs: %s, global_batch: 8, checkpoint_every_epochs: 1}\n' "$1"
}
job_yaml 2 >"$WORK/short.yaml"
job_yaml 12 >"$WORK/long.yaml"
job_yaml 4 >"$WORK/medium.yaml"  # requeued after its first checkpoint (step 4 of 16)
job_yaml 6 >"$WORK/restart.yaml"  # runs through a coordinator restart (CI budget: half of long)

# The ranks' environment comes from the coordinator's (sbatch --export=ALL):
# srun starts them with PMIx (retina-train picks MPI under srun); Open MPI on loopback.
export RETINA_SRUN_ARGS=--mpi=pmix
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo \
  OMPI_MCA_oob_tcp_if_include=lo
port=0
start_coordinator() {
  rm -f "$WORK/coordinator.ready"
  "$SVC/retina-coordinator" --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 --db "$WORK/jobs.db" \
    --store "$STORE" --executor slurm --slurm-script "$SOURCE_DIR/deploy/slurm/retina-slurm.sh" \
    --slurm-trainer-dir "$BIN" --slurm-poll-s 0.5 --ready-file "$WORK/coordinator.ready" \
    >>"$WORK/log/coordinator.service.log" 2>&1 &
  coordinator_pid=$!
  pids+=("$coordinator_pid")
  for _ in $(seq 100); do [[ -s $WORK/coordinator.ready ]] && break; sleep 0.1; done
  [[ -s $WORK/coordinator.ready ]] || { echo "the coordinator did not start"; exit 1; }
  port=$(sed -E 's/.*"grpc_port": ([0-9]+).*/\1/' "$WORK/coordinator.ready")
}
start_coordinator
export RETINA_ADDRESS=127.0.0.1:$port
retina() { "$SVC/retina" "$@"; }
# A field of the job as the API shows it (protobuf JSON, lowerCamelCase).
field() {  # ID EXPR (python over d)
  retina status "$1" --json | python3 -c "import json, sys; d = json.load(sys.stdin); print($2)"
}
wait_for() {  # ID EXPR WANT TIMEOUT_S
  local got=""
  for _ in $(seq $(($4 * 4))); do
    got=$(field "$1" "$2" 2>/dev/null || true)
    [[ $got == "$3" ]] && return 0
    sleep 0.25
  done
  echo "job $1: $2 is '$got', expected '$3'"
  retina status "$1" || true
  exit 1
}
# Slurm holds a requeued batch job (Reason=BeginTime) until the old run's
# credentials expire (cred_expire: 10 s on this cluster, see slurm_cluster.sh).
release_requeued() {  # SLURM_JOB
  for _ in $(seq 600); do
    local state
    state=$(job_field "$1" JobState)
    [[ $(job_field "$1" Restarts) -ge 1 && $state != PENDING && $state != REQUEUED ]] && return 0
    sleep 0.2
  done
  echo "Slurm job $1 did not start again"; scontrol show job "$1"; exit 1
}

# 1. Through the API to SUCCEEDED.
id=$(retina submit "$WORK/short.yaml" --world-size 2 --max-restarts 0 --watch 2>"$WORK/watch.log")
slurm=$(field "$id" "d['executorJobId']")
[[ -n $slurm ]] || { echo "$id: no Slurm job id"; exit 1; }
[[ $(job_field "$slurm" JobName) == "retina-$id-1" ]] || { echo "Slurm job $slurm: name $(job_field "$slurm" JobName)"; exit 1; }
[[ $(job_field "$slurm" NumTasks) == 2 ]] || { echo "Slurm job $slurm: $(job_field "$slurm" NumTasks) tasks, not 2"; exit 1; }
[[ $(field "$id" "d['state']") == SUCCEEDED ]] || { echo "$id: $(field "$id" "d['state'] + ' ' + d.get('message', '')")"; exit 1; }
grep -q "steps" "$WORK/watch.log" ||
  { echo "retina watch saw no progress from rank 0's events:"; cat "$WORK/watch.log"; exit 1; }
[[ -e $STORE/jobs/$id/checkpoints/LATEST ]] || { echo "$id: no checkpoint"; exit 1; }
points=$(retina metrics "$id" --json | python3 -c "import json, sys; print(len(json.load(sys.stdin)['points']))")
[[ $points -gt 0 ]] || { echo "$id: no metrics"; exit 1; }
[[ -f $STORE/jobs/$id/logs/attempt-1/rank-1.log ]] || { echo "$id: no rank 1 log"; exit 1; }
echo "[${SECONDS} s] ok 1: $id ran as Slurm job $slurm (2 tasks) to SUCCEEDED; $points metric points; progress watched"

# 2. scancel from outside.
id=$(retina submit "$WORK/long.yaml" --world-size 1 --max-restarts 2)
wait_for "$id" "d['state']" RUNNING 120
slurm=$(field "$id" "d['executorJobId']")
scancel "$slurm"
wait_for "$id" "d['state']" CANCELLED 60
field "$id" "d['message']" | grep -q "cancelled outside the service" || { echo "$id: $(field "$id" "d['message']")"; exit 1; }
echo "[${SECONDS} s] ok 2: scancel $slurm from outside -> $id CANCELLED: $(field "$id" "d['message']")"

# 3. scontrol requeue -> attempt 2 resumes.
id=$(retina submit "$WORK/medium.yaml" --world-size 1 --max-restarts 0)
wait_for "$id" "int(d['progress'].get('lastCheckpointStep', '0')) > 0" True 180
slurm=$(field "$id" "d['executorJobId']")
scontrol requeue "$slurm"
release_requeued "$slurm"
wait_for "$id" "d['state']" SUCCEEDED 300
[[ $(field "$id" "d['attempt']") == 2 ]] || { echo "$id: attempt $(field "$id" "d['attempt']"), expected 2"; exit 1; }
[[ $(field "$id" "d['executorJobId']") == "$slurm" ]] || { echo "$id: another Slurm job"; exit 1; }
grep -q "resumed from" "$STORE/jobs/$id/logs/attempt-2/rank-0.log" || { echo "$id: attempt 2 did not resume"; exit 1; }
echo "[${SECONDS} s] ok 3: scontrol requeue $slurm -> $id attempt 2 resumed from LATEST and SUCCEEDED"

# 4. Coordinator SIGKILL while the Slurm job runs.
id=$(retina submit "$WORK/restart.yaml" --world-size 1 --max-restarts 0)
wait_for "$id" "d['state']" RUNNING 120
slurm=$(field "$id" "d['executorJobId']")
kill -9 "$coordinator_pid"
wait "$coordinator_pid" 2>/dev/null || true
sleep 1
start_coordinator
wait_for "$id" "d['state']" SUCCEEDED 300
[[ $(field "$id" "d['attempt']") == 1 && $(field "$id" "d['executorJobId']") == "$slurm" ]] ||
  { echo "$id: attempt $(field "$id" "d['attempt']") on Slurm job $(field "$id" "d['executorJobId']"), expected 1 on $slurm"; exit 1; }
echo "[${SECONDS} s] ok 4: coordinator SIGKILL while Slurm job $slurm ran -> re-attached, $id SUCCEEDED in attempt 1"

# 5. Cancel through the API -> scancel.
id=$(retina submit "$WORK/long.yaml" --world-size 1 --max-restarts 2)
wait_for "$id" "d['state']" RUNNING 120
slurm=$(field "$id" "d['executorJobId']")
retina cancel "$id" >/dev/null
wait_for "$id" "d['state']" CANCELLED 60
wait_state "$slurm" CANCELLED 30
echo "[${SECONDS} s] ok 5: retina cancel $id -> scancel $slurm -> CANCELLED"
echo "PASS"
