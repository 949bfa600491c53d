#!/usr/bin/env bash
# retina_expand_hostlist (deploy/slurm/retina-slurm.sh) on fixed cases; the
# Slurm test also compares it with scontrol where Slurm is installed.
set -euo pipefail
# shellcheck source=../../deploy/slurm/retina-slurm.sh
source "$(dirname "$0")/../../deploy/slurm/retina-slurm.sh"
check() {
  local got
  got=$(retina_expand_hostlist "$1" | tr '\n' ' ')
  [[ $got == "$2 " ]] || { echo "FAIL: $1 -> [$got], expected [$2 ]"; exit 1; }
}
check "node7" "node7"
check "node[01-03,7]" "node01 node02 node03 node7"
check "gpu[9-11],cpu1" "gpu9 gpu10 gpu11 cpu1"
check "a[1-2]-b[08-09]" "a1-b08 a1-b09 a2-b08 a2-b09"
check "x,y[1],z[003-004]" "x y1 z003 z004"
echo "PASS"
