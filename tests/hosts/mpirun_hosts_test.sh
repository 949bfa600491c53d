#!/usr/bin/env bash
# The HPC launch across hosts (issue 31): mpirun on host 1 starts ranks on
# hosts 2 and 3 through OpenMPI's rsh agent (here a script that enters the
# host's network namespace, with a hostname of its own, as ssh would enter
# the node), MPI over TCP on 198.18.0.0/24 only:
#   1. the data-parallel equivalence under mpirun: 2 hosts x 2 MPI ranks
#      equal one process in float64 (tests/trainer/dist_worker);
#   2. `retina-train run` itself, 2 hosts x 1 rank (backend auto -> mpi),
#      writing its checkpoint to the shared store.
#
#   tests/hosts/mpirun_hosts_test.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
python=${RETINA_PYTHON3:-/usr/bin/python3}
command -v mpirun >/dev/null || { echo "SKIP: mpirun not found (apt install openmpi-bin)"; exit 77; }
command -v unshare >/dev/null || { echo "SKIP: no unshare (util-linux) to give each host its hostname"; exit 77; }
[[ -x $build/tests/dist_worker && -x $build/trainer/retina-train ]] || { echo "SKIP: the trainer is not built"; exit 77; }
"$python" -c "import torch" 2>/dev/null || { echo "SKIP: no Python torch to read the checkpoints"; exit 77; }
# shellcheck source=hosts.sh
source "$here/hosts.sh"
hosts_up 3
hosts_work

# OpenMPI's rsh agent: AGENT HOST CMD... runs CMD on that host.
cat >"$work/agent" <<AGENT
#!/bin/sh
host=\$1
shift
exec ip netns exec $(host_ns 1 | sed 's/-h1$//')-h\${host##*.} unshare --uts sh -c "hostname node\${host##*.}; \$*"
AGENT
chmod +x "$work/agent"
printf '%s slots=2\n%s slots=2\n' "$(host_addr 2)" "$(host_addr 3)" >"$work/hostfile"
mpi() {  # NP ARGS...: mpirun from host 1
  local np=$1
  shift
  host_exec 1 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
    timeout 300 mpirun --hostfile "$work/hostfile" -np "$np" --bind-to none --mca plm_rsh_agent "$work/agent" \
    --mca btl tcp,self --mca btl_tcp_if_include 198.18.0.0/24 --mca oob_tcp_if_include 198.18.0.0/24 "$@"
}

# Where the ranks run: two on each host.
nodes=$(mpi 4 --map-by slot hostname | sort | tr '\n' ' ')
[[ $nodes == "node2 node2 node3 node3 " ]] || fail "mpirun placed ranks on [$nodes]"

mpi 4 --map-by slot -x RETINA_TEST_DTYPE=double -x RETINA_TEST_BACKEND=mpi "$build/tests/dist_worker" "$work/mpi.pt" 3 \
  >"$work/mpi.log" 2>&1 || fail "the 2x2 MPI gang failed"
RETINA_TEST_DTYPE=double OMP_NUM_THREADS=1 "$build/tests/dist_worker" "$work/one.pt" 3 >/dev/null
diff=$("$python" "$here/compare_state_dicts.py" "$work/one.pt" "$work/mpi.pt")
"$python" -c "import sys; sys.exit(0 if float(sys.argv[1]) < 1e-10 else 1)" "$diff" ||
  fail "2 hosts x 2 MPI ranks differ from one process by $diff (float64; the bound is 1e-10)"
echo "FIGURE mpirun 2 hosts x 2 ranks vs one process (float64): max relative difference $diff"

store=$work/store
"$build/trainer/retina-synth" images --out "$work/raw" --count 8 --size 96 >/dev/null
"$build/trainer/retina-shard" pack --input "$work/raw" --out "$store/datasets/em" --size 64 --shard-images 64 >/dev/null
printf 'kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\nruntime: {threads: 1}\npretrain: {epochs: 1, global_batch: 4}\n' \
  >"$work/job.yaml"
mpi 2 --map-by node "$build/trainer/retina-train" run --config "$work/job.yaml" --store "$store" --job hpc \
  >"$work/train.log" 2>&1 || fail "retina-train under mpirun across hosts failed"
grep -q "rank 1 of 2 (local 0 of 1, from openmpi), backend mpi" "$work/train.log" || fail "rank 1 did not run under MPI"
[[ -e $store/jobs/hpc/checkpoints/LATEST ]] || fail "no checkpoint in the shared store"
echo "retina-train under mpirun: 2 ranks on node2 and node3 (MPI), checkpoint $(cat "$store/jobs/hpc/checkpoints/LATEST")"
echo "PASS"
