#!/usr/bin/env bash
# The two real-Slurm tests on one throwaway cluster (one cluster start for
# both, one ctest): tests/deploy/slurm_test.sh (the batch scripts: sbatch,
# mpirun/srun launchers, requeue) then tests/deploy/slurm_service_test.sh
# (the coordinator's Slurm executor). Each keeps its own work folder inside
# the cluster's. Exit 77 (skipped) with the reason where Slurm cannot start
# here; a part that skips (services not built) does not fail the suite.
#
#   tests/deploy/slurm_suite.sh BUILD_DIR
set -euo pipefail
# shellcheck source=slurm_cluster.sh
source "$(dirname "$0")/slurm_cluster.sh" "$@"
export RETINA_SLURM_CLUSTER=$WORK
status=0
for part in slurm_test.sh slurm_service_test.sh; do
  t0=$SECONDS
  rc=0
  bash "$SOURCE_DIR/tests/deploy/$part" "$BUILD_DIR" || rc=$?
  case $rc in
    0) echo "[suite] $part passed in $((SECONDS - t0)) s" ;;
    77) echo "[suite] $part skipped" ;;
    *) echo "[suite] $part FAILED (exit $rc) after $((SECONDS - t0)) s"; status=1 ;;
  esac
done
exit "$status"
