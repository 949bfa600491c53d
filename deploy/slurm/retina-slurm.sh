#!/usr/bin/env bash
# Launches the ranks of a RETINA training job inside a Slurm allocation, with
# no coordinator. Called by pretrain.sbatch and finetune.sbatch (or by hand
# inside `salloc`):
#
#   retina-slurm.sh CONFIG.yaml
#
# Environment (all optional except RETINA_STORE):
#   RETINA_STORE        the shared store (datasets/, jobs/) every node mounts
#   RETINA_BIN          folder with retina-train (default: found on PATH)
#   RETINA_LAUNCHER     srun (default) or mpirun
#   RETINA_JOB_ID       the job's id in the store (default slurm-$SLURM_JOB_ID,
#                       so a requeued job finds its own checkpoints)
#   RETINA_MASTER_PORT  rendezvous port (default 20000 + SLURM_JOB_ID % 20000)
#   RETINA_IFNAME       network interface for NCCL and Gloo (sets
#                       NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME unless set)
#   RETINA_SRUN_ARGS    extra srun arguments (e.g. "--mpi=pmix")
#   RETINA_MPIRUN_ARGS  extra mpirun arguments (e.g. "--mca btl_tcp_if_include ib0")
#   RETINA_TRAIN_ARGS   extra retina-train run arguments, as shell words (the
#                       coordinator's Slurm executor: --job-uid UID --confine
#                       --allowed-root DIR ..., each quoted; common/rank_launch.h)
#   RETINA_ATTEMPT_BASE attempts before this Slurm job (the coordinator's Slurm
#                       executor; default 0): logs go to attempt-<base + restarts + 1>
#
# What it does:
#   - MASTER_ADDR = the first host of SLURM_JOB_NODELIST (the hostlist expanded
#     by scontrol, or by retina_expand_hostlist where scontrol is missing);
#     MASTER_PORT per job, so two jobs sharing a node do not collide;
#   - starts SLURM_NTASKS ranks with srun, or with mpirun (-bind-to none
#     -map-by slot, NCCL_*/GLOO_*/MASTER_*/OMP_* forwarded);
#   - each rank runs `retina-train run --config CONFIG --store STORE --job ID
#     --resume auto` with its output in
#     STORE/jobs/ID/logs/attempt-<SLURM_RESTART_COUNT + 1>/rank-<r>.log;
#   - preemption: the sbatch scripts ask for `--signal=B:USR1@<s>` and
#     `--requeue`; USR1 is forwarded to the ranks, which finish the step, write
#     a checkpoint and exit 75; the job then requeues itself (scontrol requeue)
#     and its next start resumes from that checkpoint. A job requeued or
#     preempted by Slurm (SIGTERM) checkpoints the same way.
# Exit status: the ranks' (0 done, 75 preempted and requeued, else failure);
# 1 when the launcher exited 0 but a rank never started (a failed step launch).
set -euo pipefail

# Expands a Slurm hostlist ("node[01-03,7],gpu5,rack[1-2]-n[1-2]") into one
# host per line, in order. Pure bash, for machines without scontrol.
retina_expand_hostlist() {
  local list=$1 item="" depth=0 c i
  local -a items=()
  for ((i = 0; i < ${#list}; i++)); do
    c=${list:i:1}
    if [[ $c == "[" ]]; then depth=$((depth + 1)); fi
    if [[ $c == "]" ]]; then depth=$((depth - 1)); fi
    if [[ $c == "," && $depth -eq 0 ]]; then items+=("$item"); item=""; else item+=$c; fi
  done
  [[ -n $item ]] && items+=("$item")
  for item in "${items[@]}"; do _retina_expand_one "$item"; done
}

# One hostlist item with zero or more bracket groups.
_retina_expand_one() {
  local item=$1
  if [[ $item != *"["* ]]; then
    echo "$item"
    return
  fi
  local prefix=${item%%\[*} rest=${item#*\[}
  local group=${rest%%\]*} suffix=${rest#*\]}
  local range lo hi n width
  local -a ranges
  IFS=, read -r -a ranges <<<"$group"
  for range in "${ranges[@]}"; do
    if [[ $range == *-* ]]; then
      lo=${range%-*}
      hi=${range#*-}
    else
      lo=$range
      hi=$range
    fi
    width=${#lo}  # zero padding is kept ("01-03" -> 01 02 03)
    for ((n = 10#$lo; n <= 10#$hi; n++)); do
      _retina_expand_one "$prefix$(printf "%0${width}d" "$n")$suffix"
    done
  done
}

retina_hosts() {
  if command -v scontrol >/dev/null 2>&1 && scontrol show hostnames "$1" 2>/dev/null; then return; fi
  retina_expand_hostlist "$1"
}

# The rank's own process: log file, then exec retina-train.
_retina_rank() {
  # The same precedence as retina-train: under mpirun, SLURM_PROCID is the batch step's 0.
  local rank=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}
  local logs=$RETINA_STORE/jobs/$RETINA_JOB_ID/logs/attempt-$RETINA_ATTEMPT
  mkdir -p "$logs"
  # The main script counts these: a launcher that exits 0 without having
  # started every rank (a step whose launch failed) is not a success.
  : >"$logs/rank-$rank.started"
  local -a extra=()
  # Shell words, quoted as the coordinator quotes them (common/rank_launch.h
  # ShellQuoteArgs): a root with spaces stays one argument.
  [[ -n ${RETINA_TRAIN_ARGS:-} ]] && eval "extra=(${RETINA_TRAIN_ARGS})"
  # The argv is RankLaunch::RunArgs (common/rank_launch.h); a test runs this
  # function and compares.
  exec "$RETINA_TRAIN" run --config "$RETINA_CONFIG" --store "$RETINA_STORE" --job "$RETINA_JOB_ID" --resume auto \
    "${extra[@]}" >>"$logs/rank-$rank.log" 2>&1
}

_retina_main() {
  if [[ ${1:-} == "--rank" ]]; then
    _retina_rank
  fi
  local config=${1:?usage: retina-slurm.sh CONFIG.yaml}
  : "${SLURM_JOB_ID:?not inside a Slurm allocation (sbatch/salloc)}"
  : "${RETINA_STORE:?set RETINA_STORE to the shared store}"
  export RETINA_CONFIG
  RETINA_CONFIG=$(readlink -f "$config")
  [[ -f $RETINA_CONFIG ]] || { echo "retina-slurm: $config: no such file" >&2; exit 2; }
  export RETINA_TRAIN=${RETINA_BIN:+$RETINA_BIN/}retina-train
  command -v "$RETINA_TRAIN" >/dev/null || { echo "retina-slurm: $RETINA_TRAIN not found (set RETINA_BIN)" >&2; exit 2; }
  export RETINA_JOB_ID=${RETINA_JOB_ID:-slurm-$SLURM_JOB_ID}
  export RETINA_ATTEMPT=$((${RETINA_ATTEMPT_BASE:-0} + ${SLURM_RESTART_COUNT:-0} + 1))
  export RETINA_TRAIN_ARGS=${RETINA_TRAIN_ARGS:-}
  export RETINA_STORE
  local nodelist=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-$(hostname)}}
  MASTER_ADDR=$(retina_hosts "$nodelist" | head -n 1)
  export MASTER_ADDR
  export MASTER_PORT=${RETINA_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
  if [[ -n ${RETINA_IFNAME:-} ]]; then
    export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$RETINA_IFNAME}
    export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$RETINA_IFNAME}
  fi
  local ntasks=${SLURM_NTASKS:-1}
  local self
  self=$(readlink -f "${BASH_SOURCE[0]}")
  echo "retina-slurm: job $RETINA_JOB_ID attempt $RETINA_ATTEMPT, $ntasks rank(s) via ${RETINA_LAUNCHER:-srun}," \
    "rendezvous $MASTER_ADDR:$MASTER_PORT, logs $RETINA_STORE/jobs/$RETINA_JOB_ID/logs/attempt-$RETINA_ATTEMPT/"

  local -a cmd
  case ${RETINA_LAUNCHER:-srun} in
    srun)
      # shellcheck disable=SC2206
      cmd=(srun --ntasks="$ntasks" --kill-on-bad-exit=1 --cpu-bind=none ${RETINA_SRUN_ARGS:-} "$self" --rank)
      ;;
    mpirun)
      local -a forward=(-x MASTER_ADDR -x MASTER_PORT -x RETINA_CONFIG -x RETINA_TRAIN -x RETINA_JOB_ID
                        -x RETINA_ATTEMPT -x RETINA_STORE -x RETINA_TRAIN_ARGS -x PATH)
      local v
      for v in $(compgen -e); do
        case $v in NCCL_* | GLOO_* | OMP_* | CUDA_* | UCX_* | LD_LIBRARY_PATH) forward+=(-x "$v") ;; esac
      done
      # shellcheck disable=SC2206
      cmd=(mpirun -np "$ntasks" -bind-to none -map-by slot "${forward[@]}" ${RETINA_MPIRUN_ARGS:-} "$self" --rank)
      ;;
    *)
      echo "retina-slurm: RETINA_LAUNCHER must be srun or mpirun, got '$RETINA_LAUNCHER'" >&2
      exit 2
      ;;
  esac

  # Signals: see the traps below.
  local launcher_pid status=0 requeue_self=0
  "${cmd[@]}" &
  launcher_pid=$!
  # USR1 comes from --signal before the time limit: pass it on, and requeue
  # ourselves after the checkpoint. TERM comes from Slurm itself (requeue,
  # preemption, scancel), which signals every process of the job's steps, the
  # ranks included, and decides what happens next: only keep waiting for the
  # ranks (a second TERM through srun would make it kill the step at once).
  trap 'requeue_self=1; kill -USR1 "$launcher_pid" 2>/dev/null || true' USR1
  trap ':' TERM
  while true; do
    wait "$launcher_pid" && status=0 || status=$?
    # wait returns > 128 when a trapped signal interrupted it; the launcher runs on.
    if kill -0 "$launcher_pid" 2>/dev/null; then continue; fi
    break
  done
  trap - USR1 TERM
  if [[ $status -eq 0 ]]; then
    # srun can exit 0 after "task 0 launch failed" (seen with PMIx): every
    # rank must have started, or the attempt failed.
    local logs=$RETINA_STORE/jobs/$RETINA_JOB_ID/logs/attempt-$RETINA_ATTEMPT r
    local -a missing=()
    for ((r = 0; r < ntasks; r++)); do [[ -e $logs/rank-$r.started ]] || missing+=("$r"); done
    if [[ ${#missing[@]} -gt 0 ]]; then
      echo "retina-slurm: the launcher exited 0 but rank(s) ${missing[*]} of $ntasks never started" \
        "(the step's launch failed); the attempt failed" >&2
      status=1
    fi
  fi
  if [[ $status -eq 75 && $requeue_self -eq 1 ]]; then
    echo "retina-slurm: ranks checkpointed and stopped (preempted); requeueing $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" || echo "retina-slurm: requeue refused (sbatch --requeue?)" >&2
  fi
  echo "retina-slurm: ranks exited with status $status"
  return "$status"
}

# Sourced (tests, other scripts): only define the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  _retina_main "$@"
fi
