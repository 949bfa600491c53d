# Sourced by the real-Slurm tests: a throwaway one-node Slurm on this machine
# (munged, slurmctld and slurmd with ports, state, spool and munge key in a
# temporary folder $WORK), stopped with everything it ran when the test exits.
# Exits 77 (ctest: skipped) with the reason when Slurm or munge is missing or
# the test does not run as root. Defines job_field JOB FIELD and
# wait_state JOB STATE TIMEOUT_S; sets SOURCE_DIR, BUILD_DIR, BIN, WORK, host.
#
#   source tests/deploy/slurm_cluster.sh BUILD_DIR
# With RETINA_SLURM_CLUSTER set (by tests/deploy/slurm_suite.sh, the folder
# of a cluster it started), the cluster is reused: $WORK is then a fresh
# folder inside it, and the test's exit cancels its jobs and removes only that.
SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_DIR=$(cd "${1:?usage: slurm_test.sh BUILD_DIR}" && pwd)
BIN=$BUILD_DIR/trainer

skip() { echo "SKIPPED: $*"; exit 77; }
job_field() { scontrol show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
wait_state() {  # JOB STATE TIMEOUT_S
  local state=""
  for _ in $(seq $(($3 * 5))); do
    state=$(job_field "$1" JobState)
    [[ $state == "$2" ]] && return 0
    [[ $state == FAILED || $state == CANCELLED || $state == TIMEOUT || $state == NODE_FAIL ]] && break
    sleep 0.2
  done
  echo "job $1: state $state, expected $2"
  scontrol show job "$1"
  return 1
}
cancel_all_jobs() {
  local left
  left=$(squeue -h -o %i 2>/dev/null || true)
  if [[ -n $left ]]; then
    # shellcheck disable=SC2086
    scancel $left 2>/dev/null || true
    for _ in $(seq 100); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.2; done
  fi
}
print_logs() {  # CLUSTER_DIR
  echo "--- slurmctld.log (tail)"; tail -n 30 "$1/log/slurmctld.log" 2>/dev/null || true
  echo "--- slurmd.log (tail)"; tail -n 30 "$1/log/slurmd.log" 2>/dev/null || true
  for f in "$WORK"/out/* "$WORK"/store/jobs/*/logs/*/*.log "$WORK"/store/jobs/*/logs/*.out "$WORK"/log/*.service.log; do
    [[ -f $f ]] && { echo "--- $f"; tail -n 20 "$f"; }
  done
}
# The EXIT trap: on failure the cluster's logs (CLUSTER_DIR) and the test's,
# then the test's jobs cancelled, its processes stopped, $WORK removed.
finish() {  # CLUSTER_DIR
  local rc=$?
  [[ $rc -ne 0 && $rc -ne 77 ]] && print_logs "$1"
  cancel_all_jobs
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
for tool in munged mungekey slurmctld slurmd sbatch scontrol squeue sinfo srun; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool not installed (Debian slurm-wlm and munge; scripts/setup installs them)"
done
[[ $(id -u) -eq 0 ]] || skip "slurmd must run as root to start job steps; this test runs as $(id -un)"

if [[ -n ${RETINA_SLURM_CLUSTER:-} ]]; then
  export SLURM_CONF=$RETINA_SLURM_CLUSTER/slurm.conf
  host=$(hostname)
  WORK=$(mktemp -d "$RETINA_SLURM_CLUSTER/run-XXXXXX")
  chmod 755 "$WORK"
  mkdir -p "$WORK"/{log,out,store}
  pids=()
  trap 'finish "$RETINA_SLURM_CLUSTER"' EXIT
  return 0
fi

WORK=$(mktemp -d /tmp/retina-slurm-test-XXXXXX)
pids=()
trap 'finish "$WORK"' EXIT
mkdir -p "$WORK"/{munge,state,spool,log,out,store}
chmod 700 "$WORK/munge"
chmod 755 "$WORK"

# munge with its own key and socket.
mungekey -c -k "$WORK/munge/munge.key" >/dev/null
chmod 400 "$WORK/munge/munge.key"
munged -F -f -S "$WORK/munge/sock" --key-file="$WORK/munge/munge.key" --log-file="$WORK/munge/log" \
  --pid-file="$WORK/munge/pid" --seed-file="$WORK/munge/seed" >"$WORK/munge/out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [[ -S $WORK/munge/sock ]] && break; sleep 0.1; done
[[ -S $WORK/munge/sock ]] || { echo "munged did not start"; cat "$WORK/munge/log"; exit 1; }

host=$(hostname)
base=$((30000 + ($$ % 1000) * 10))
cpus=$(nproc)
export SLURM_CONF=$WORK/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=retinatest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
SrunPortRange=$((base + 2))-$((base + 9))
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$WORK/munge/sock,cred_expire=10
CredType=cred/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
TmpFS=$WORK/tmp
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=60
MinJobAge=600
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
# PMIx's per-step directories (spmix_appdir_<uid>_<step>) under $WORK, not
# /tmp: a run that is killed leaves them behind, and a later cluster's job of
# the same id then cannot launch its step ("File exists").
mkdir -p "$WORK/tmp" "$WORK/pmix"
printf 'PMIxCliTmpDirBase=%s\n' "$WORK/pmix" >"$WORK/mpi.conf"
slurmctld -D -c -f "$SLURM_CONF" >"$WORK/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$WORK/log/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [[ $(sinfo -h -o %T 2>/dev/null) == idle* ]] && break
  sleep 0.2
done
[[ $(sinfo -h -o %T 2>/dev/null) == idle* ]] || { echo "Slurm node did not become idle: $(sinfo 2>&1)"; exit 1; }
echo "slurm up: $(sinfo -h -o '%P %D %T %C')"
