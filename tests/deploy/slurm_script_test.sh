#!/usr/bin/env bash
# deploy/slurm/retina-slurm.sh's verdict without a Slurm cluster: a fake srun
# on PATH and a fake retina-train. A launcher that exits 0 without starting
# every rank (srun did, after "task 0 launch failed" under PMIx) fails the
# attempt, saying so; one that started every rank, each exiting 0, succeeds;
# a rank's failure is the script's exit status.
set -euo pipefail
script=$(cd "$(dirname "$0")/../../deploy/slurm" && pwd)/retina-slurm.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/store"
printf 'kind: pretrain\n' >"$work/job.yaml"
cat >"$work/bin/retina-train" <<'TRAIN'
#!/usr/bin/env bash
exit "${FAKE_RANK_EXIT:-0}"
TRAIN
# srun --ntasks=N ... SCRIPT --rank: runs the rank N times (SLURM_PROCID), or
# none with FAKE_SRUN_LAUNCH_FAILS, and exits with the highest rank status.
cat >"$work/bin/srun" <<'SRUN'
#!/usr/bin/env bash
n=1
for a in "$@"; do [[ $a == --ntasks=* ]] && n=${a#--ntasks=}; done
[[ -n ${FAKE_SRUN_LAUNCH_FAILS:-} ]] && { echo "srun: error: task 0 launch failed: Unspecified error" >&2; exit 0; }
self=${*: -2:1}
worst=0
for ((r = 0; r < n; r++)); do
  SLURM_PROCID=$r bash "$self" --rank && s=0 || s=$?
  ((s > worst)) && worst=$s
done
exit "$worst"
SRUN
chmod +x "$work/bin/retina-train" "$work/bin/srun"
run() {  # JOB_ID [ENV...]: the script's exit status, its output in $work/out
  local id=$1
  shift
  env PATH="$work/bin:$PATH" SLURM_JOB_ID=7 SLURM_NTASKS=2 SLURM_JOB_NODELIST=localhost RETINA_STORE="$work/store" \
    RETINA_BIN="$work/bin" RETINA_JOB_ID="$id" "$@" bash "$script" "$work/job.yaml" >"$work/out" 2>&1 && return 0 || return $?
}
status=0
run ok || status=$?
[[ $status -eq 0 ]] || { echo "FAIL: 2 ranks that ran and exited 0: status $status"; cat "$work/out"; exit 1; }
status=0
run failed FAKE_RANK_EXIT=3 || status=$?
[[ $status -eq 3 ]] || { echo "FAIL: ranks exiting 3: status $status"; cat "$work/out"; exit 1; }
status=0
run unlaunched FAKE_SRUN_LAUNCH_FAILS=1 || status=$?
[[ $status -eq 1 ]] || { echo "FAIL: srun exited 0 without starting ranks: status $status"; cat "$work/out"; exit 1; }
grep -q "rank(s) 0 1 of 2 never started" "$work/out" || { echo "FAIL: no reason given:"; cat "$work/out"; exit 1; }
echo "PASS"
