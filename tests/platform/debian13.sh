#!/usr/bin/env bash
# The platform stage (ctest `platform_debian13`, label `platform`): the
# project on Debian 13 (trixie), with its libtorch 2.6, PyTorch 2.6, Python
# 3.13, OpenMPI 5 and zarr 3, in a root this script makes with debootstrap
# from Debian's registry. Inside it, as a new user would: our scripts/setup,
# configure, build the programs and tests of the representative set, run it.
#
#   tests/platform/debian13.sh [--shell | --run CMD]
#       --shell: a shell in the root instead; --run: CMD there, from the source
#       tree, with B its build folder in the root (e.g. --run '$B/tests/trainer_tests')
#
# The representative set (RETINA_PLATFORM_TESTS overrides the ctest -R regex):
#   - every test labelled unit;
#   - model interop and the weights peers: checkpoints we write loaded by
#     PyTorch 2.6's torch.load with its default weights_only=True, its
#     state dicts read by us, the parity model and the float64 training
#     steps against the independent PyTorch implementation;
#   - a 2-rank Gloo run equal to one process in float64 (rendezvous over
#     TCPStore, which Debian's 2.6 builds without libuv);
#   - an evaluation job and an infer job written to OME-Zarr, read by zarr 3;
#   - the job service end to end with Debian 13's gRPC and protobuf: a
#     coordinator, two workers and their trainer ranks watched through every
#     transition, TLS with a test CA, and the model registry (register,
#     lineage, model references, restart).
# Left to the main stage (CI budget; nothing in them depends on the
# platform beyond what the set above runs): the planted-bug parity cases,
# the 1/2/3-rank infer equivalence, the server's hot reload, and the demo
# (its service, ranks and jobs are what the service tests above run; it
# took 215 s of the stage's 389 s of tests).
#
# Cached across runs on one machine, under RETINA_PLATFORM_CACHE (default
# /var/cache/retina-platform): the root (made once; scripts/setup runs in it
# every time, installing what a changed package list adds), its build
# folder (incremental) and its ccache. Skips (exit 77), saying why, without
# root or debootstrap. Mounts live in a private mount namespace and every
# process in a private PID namespace: both vanish when the stage ends.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${RETINA_PLATFORM_CACHE:-/var/cache/retina-platform}
MIRROR=${RETINA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/debian13
JOBS=${RETINA_JOBS:-$(nproc)}

skip() { echo "platform debian13: SKIPPED: $*"; exit 77; }
say() { echo "platform debian13: $*"; }

[[ $(id -u) -eq 0 ]] || skip "needs root (debootstrap, chroot and mounts); run as root"
command -v debootstrap >/dev/null || skip "debootstrap is not installed (scripts/setup installs it)"
command -v unshare >/dev/null || skip "unshare (util-linux) is not installed"
mkdir -p "$CACHE"

t0=$(date +%s)
if [[ ! -f $ROOT/.retina-root-ok ]]; then
  say "making the Debian 13 root with debootstrap ($MIRROR) in $ROOT"
  rm -rf "$ROOT.partial"
  debootstrap --variant=minbase trixie "$ROOT.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/debootstrap.log"
    echo "platform debian13: debootstrap failed (log: $CACHE/debootstrap.log)" >&2
    exit 1
  }
  rm -rf "$ROOT"
  mv "$ROOT.partial" "$ROOT"
  touch "$ROOT/.retina-root-ok"
fi
# The machine's own name resolution: ranks meet at the worker's host name.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/hosts "$ROOT/etc/hosts"
say "root ready after $(($(date +%s) - t0)) s"

# What runs inside the root, as root, in the source tree (mounted at the
# same path as here, so paths in messages read the same).
# The root's build folder, one per source tree (CMake ties a build folder to
# its source path: another checkout must not reuse it).
B=/var/build/retina-$(printf '%s' "$SRC" | sha256sum | cut -c1-12)

inner=$(mktemp)
trap 'rm -f "$inner"' EXIT
if [[ ${1:-} == --shell ]]; then
  echo 'rm -f "$0"; cd "$SRC" && exec bash -i' >"$inner"
elif [[ ${1:-} == --run ]]; then
  printf 'rm -f "$0"; cd "$SRC" && %s\n' "${2:?--run CMD}" >"$inner"
else
  cat >"$inner" <<'INNER'
set -euo pipefail
rm -f "$0"  # bash holds it open; nothing is left in the root's /tmp
cd "$SRC"
export DEBIAN_FRONTEND=noninteractive CCACHE_DIR=/var/cache/ccache CCACHE_MAXSIZE=2G PYTHONDONTWRITEBYTECODE=1
echo "platform debian13: $(. /etc/os-release; echo "$PRETTY_NAME")"
s0=$(date +%s)
bash scripts/setup
s1=$(date +%s)
python3 -c 'import sys, torch, numpy; print("platform debian13: Python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__)'
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build $B -j "$JOBS" --target $TARGETS -- -k 0  # every compile error at once
s2=$(date +%s)
ccache -s 2>/dev/null | grep -iE 'hits|misses' | head -3 || true
rc=0
ctest --test-dir $B --output-on-failure -j "$JOBS" -L unit -LE 'platform|gpu' || rc=$?
ctest --test-dir $B --output-on-failure -j "$JOBS" -R "$TESTS" -LE 'platform|gpu|unit' || rc=$?
s3=$(date +%s)
echo "platform debian13: setup $((s1 - s0)) s, build $((s2 - s1)) s, tests $((s3 - s2)) s"
exit $rc
INNER
fi

# The targets the representative set runs (its tests' executables and the
# programs they start), and the set itself.
TARGETS=${RETINA_PLATFORM_TARGETS:-"retina-train retina-shard retina-synth retina-eval retina-infer retina-suggest retina-export retina-coordinator retina-worker retina retina-serve service_tests serve_tests common_tests trainer_tests trainer_interop_tests trainer_dist_tests dist_worker trainer_engine_tests trainer_parity_tests services_unit_tests"}
TESTS=${RETINA_PLATFORM_TESTS:-"^(Configs/ModelInterop\\.|ReadStateDictFile\\.|TrainingParity\\.(Pretraining|Binary|MultiClass|Frozen)|InitParity\\.Every|DataParallel\\.TwoGlooRanksEqualOneProcessInFloat64|DataParallel\\.TwoMpiRanksUnderMpirun|DataParallel\\.UnderATorchrunAgentStore|DataParallel\\.RealTorchrun|Engine\\.CheckpointFilesLoadInPython|Engine\\.RetinaEval|Engine\\.RetinaInfer|Zarr\\.ReadsWhatPythonZarrWrote|ServeTest\\.ARegionEquals|Service\\.(EndToEndTwoWorkers|TlsWithATestCa)|Models\\.|deploy_docker_packages_and_install)"}

SHARED=$(cd "$SRC/.." && pwd)/shared
unshare --mount --pid --fork --propagation private bash -c '
  set -euo pipefail
  R=$1; SRC=$2; SHARED=$3; INNER=$4
  mount -t proc proc "$R/proc"
  mount --rbind /sys "$R/sys"
  mount --bind /dev "$R/dev"
  mount -t devpts devpts "$R/dev/pts" -o newinstance,ptmxmode=0666 2>/dev/null || mount --bind /dev/pts "$R/dev/pts"
  mount -t tmpfs tmpfs "$R/dev/shm"
  mkdir -p "$R$SRC" "$R/var/build" "$R/var/cache/ccache"
  mount --bind "$SRC" "$R$SRC"
  if [[ -d $SHARED ]]; then
    mkdir -p "$R$SHARED"
    mount --bind -o ro "$SHARED" "$R$SHARED"
  fi
  # One file per invocation: a --run beside a running stage must not replace
  # the script that bash is still reading.
  inner_in_root=/tmp/$(basename "$INNER")
  cp "$INNER" "$R$inner_in_root"
  exec chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    TERM="${TERM:-dumb}" ${OMP_WAIT_POLICY:+OMP_WAIT_POLICY=$OMP_WAIT_POLICY} SRC="$SRC" B="$8" JOBS="$5" TARGETS="$6" TESTS="$7" CI="${CI:-}" bash "$inner_in_root"
' platform "$ROOT" "$SRC" "$SHARED" "$inner" "$JOBS" "$TARGETS" "$TESTS" "$B"
