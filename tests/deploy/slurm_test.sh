#!/usr/bin/env bash
# deploy/slurm on a real Slurm: starts munged, slurmctld and slurmd on this
# machine with a throwaway configuration (ports, state, spool and munge key in
# a temporary folder), then
#   1. hostlist expansion: retina_expand_hostlist agrees with scontrol;
#   2. sbatch pretrain.sbatch with 2 CPU tasks launched by mpirun: COMPLETED,
#      final checkpoint in the store, one log per rank;
#   3. sbatch pretrain.sbatch with 2 tasks launched by srun (--mpi=pmix),
#      `scontrol requeue` once a checkpoint exists: the job runs again
#      (restart count 1), attempt 2's rank 0 resumes from a step > 0, and it
#      completes;
#   4. the same through mpirun, interrupted by the USR1 that --signal=B:USR1
#      sends before the time limit: the script requeues its own job, which
#      resumes and completes.
# Exit 77 (ctest: skipped) with the reason when Slurm or munge is missing.
#
#   tests/deploy/slurm_test.sh BUILD_DIR
set -euo pipefail
# shellcheck source=slurm_cluster.sh
source "$(dirname "$0")/slurm_cluster.sh" "$@"

# 1. Hostlist expansion: our pure-bash expansion agrees with scontrol.
# shellcheck source=../../deploy/slurm/retina-slurm.sh
source "$SOURCE_DIR/deploy/slurm/retina-slurm.sh"
for list in "node[01-03,7],gpu5" "a[1-2]-b[08-10]" "$host" "x[9-11],y"; do
  want=$(scontrol show hostnames "$list")
  got=$(retina_expand_hostlist "$list")
  [[ $got == "$want" ]] || { echo "hostlist $list: got [$got], scontrol says [$want]"; exit 1; }
done
echo "ok: hostlists expand like scontrol"

# A small pre-training dataset and job file (tiny model, 64 px, Gloo-free MPI ranks).
STORE=$WORK/store
"$BIN/retina-synth" images --out "$WORK/raw" --count 32 --size 96 >/dev/null
"$BIN/retina-shard" pack --input "$WORK/raw" --out "$STORE/datasets/em" --size 64 --shard-images 64 >/dev/null
config() {  # EPOCHS
  cat <<EOF
kind: pretrain
seed: 0
model: {name: tiny, image_size: 64}
data: {dataset: em, loader_threads: 1}
runtime: {threads: 1}
optimizer: {lr: 0.01}
pretrain: {epochs: $1, global_batch: 8, checkpoint_every_epochs: 1}
EOF
}
# long: 3 epochs of 16 steps, the interruption comes within 0.2 s of the
# first checkpoint (step 16), 32 steps before the end.
config 2 >"$WORK/short.yaml"
config 3 >"$WORK/long.yaml"
export RETINA_STORE=$STORE RETINA_BIN=$BIN RETINA_SLURM_DIR=$SOURCE_DIR/deploy/slurm
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo \
  OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_plm=slurm OMPI_MCA_rmaps_base_oversubscribe=1

# 2. mpirun launcher, to completion.
cd "$WORK"
job=$(RETINA_LAUNCHER=mpirun sbatch --parsable --ntasks 2 --cpus-per-task 1 -o "$WORK/out/%j.out" \
  "$SOURCE_DIR/deploy/slurm/pretrain.sbatch" "$WORK/short.yaml")
wait_state "$job" COMPLETED 240
[[ $(job_field "$job" ExitCode) == 0:0 ]] || { echo "job $job exit code $(job_field "$job" ExitCode)"; exit 1; }
ckpt=$STORE/jobs/slurm-$job/checkpoints
total=$(sed -n 's/.*: \([0-9]*\)\/\1 steps .*/\1/p' "$STORE/jobs/slurm-$job/logs/attempt-1/rank-0.log" | tail -n 1)
[[ -n $total ]] || { echo "rank 0 never logged its last step"; exit 1; }
final=$(printf 'step-%08d' "$total")
ls "$ckpt" | grep -qx "$final" || { echo "no final checkpoint $final in $ckpt: $(ls "$ckpt" 2>&1)"; exit 1; }
for r in 0 1; do
  [[ -f $STORE/jobs/slurm-$job/logs/attempt-1/rank-$r.log ]] || { echo "no log for rank $r"; exit 1; }
done
grep -q "rendezvous $host:$((20000 + job % 20000))" "$WORK/out/$job.out" ||
  { echo "MASTER_ADDR/PORT not derived from the job"; cat "$WORK/out/$job.out"; exit 1; }
echo "[${SECONDS} s] ok: mpirun job $job completed with checkpoint $final and per-rank logs"

# Submits the long job with launcher $1 (+ srun args $2), interrupts it after
# its first checkpoint with the command "$3 <job>", and checks that it restarts
# once, resumes past step 0 and completes with its final checkpoint.
interrupted_job_resumes() {
  local launcher=$1 srun_args=$2 interrupt=$3 job ckpt first log step total state
  job=$(RETINA_LAUNCHER=$launcher RETINA_SRUN_ARGS=$srun_args sbatch --parsable --ntasks 2 --cpus-per-task 1 \
    -o "$WORK/out/%j.out" "$SOURCE_DIR/deploy/slurm/pretrain.sbatch" "$WORK/long.yaml")
  ckpt=$STORE/jobs/slurm-$job/checkpoints
  for _ in $(seq 900); do
    [[ -n $(ls "$ckpt" 2>/dev/null | grep '^step-' | head -n 1) ]] && break
    case $(job_field "$job" JobState) in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
    sleep 0.2
  done
  first=$(ls "$ckpt" 2>/dev/null | grep '^step-' | head -n 1 || true)
  [[ -n $first ]] || { echo "job $job wrote no checkpoint before ending ($(job_field "$job" JobState))"; exit 1; }
  $interrupt "$job"
  echo "[${SECONDS} s] $interrupt $job after checkpoint $first"
  # Slurm holds a requeued batch job (Reason=BeginTime) until the old run's
  # credentials expire: cred_expire, 10 s on this cluster (Slurm's default is 120 s).
  for _ in $(seq 1500); do
    state=$(job_field "$job" JobState)
    [[ $(job_field "$job" Restarts) -ge 1 && $state != PENDING && $state != REQUEUED ]] && break
    sleep 0.2
  done
  [[ $(job_field "$job" Restarts) == 1 ]] || { echo "job $job did not restart"; scontrol show job "$job"; exit 1; }
  echo "[${SECONDS} s] $job runs again"
  wait_state "$job" COMPLETED 300
  log=$STORE/jobs/slurm-$job/logs/attempt-2/rank-0.log
  grep "resumed from" "$log" || { echo "attempt 2 did not resume"; exit 1; }
  step=$(sed -n 's/.*resumed from .* at step \([0-9]*\).*/\1/p' "$log" | head -n 1)
  [[ ${step:-0} -gt 0 ]] || { echo "attempt 2 resumed from step ${step:-0}, expected > 0"; exit 1; }
  grep -q "ranks exited with status 75" "$WORK/out/$job.out" || { echo "attempt 1 did not stop as preempted (75)"; exit 1; }
  total=$(sed -n 's/.*: \([0-9]*\)\/\1 steps .*/\1/p' "$log" | tail -n 1)
  ls "$ckpt" | grep -qx "$(printf 'step-%08d' "${total:-0}")" || { echo "no final checkpoint after the restart"; exit 1; }
  echo "[${SECONDS} s] ok: $launcher job $job restarted after $first, attempt 2 resumed from step $step and completed at step $total"
  LAST_JOB=$job
}

# 3. srun launcher, requeued by Slurm (SIGTERM) mid-run.
interrupted_job_resumes srun --mpi=pmix "scontrol requeue"

# 4. mpirun launcher, the time-limit warning of --signal=B:USR1@300 (sent by
#    hand): the ranks checkpoint and the script requeues its own job.
usr1() { scancel --signal=USR1 --batch "$1"; }
interrupted_job_resumes mpirun "" usr1
grep -q "requeueing $LAST_JOB" "$WORK/out/$LAST_JOB.out" || { echo "job $LAST_JOB did not requeue itself"; exit 1; }
echo "PASS"
