#!/usr/bin/env bash
# The GPU kit, as far as a CPU machine allows (issue 19):
# 1. scripts/gpu-kit's package set covers every library retina-train links
#    (its ELF NEEDED entries, mapped to Debian packages with dpkg -S), except
#    what the GPU machine itself provides (libtorch: torch's own; the C/C++
#    runtime; CUDA and NCCL: /usr/local/cuda or torch's wheels, no package)
#    and MPI, which the kit's build leaves out (RETINA_WITH_MPI=OFF);
# 2. bench/gpu_check.sh parses, and without a GPU it refuses with exit 3,
#    naming what is missing in its figures.json, before touching anything.
#   gpu_kit_test.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:?usage: gpu_kit_test.sh BUILD_DIR}
TRAIN=$BUILD/trainer/retina-train
command -v dpkg > /dev/null || { echo "SKIP: no dpkg (not a Debian machine)"; exit 77; }
command -v apt-cache > /dev/null || { echo "SKIP: no apt-cache"; exit 77; }

KIT=$(scripts/gpu-kit --list)
[ -n "$KIT" ] || { echo "FAIL: scripts/gpu-kit --list printed nothing"; exit 1; }
PROVIDED='^(libtorch[0-9.]*|libc6|libstdc\+\+6|libgcc-s1|libopenmpi[0-9]*)$'
missing=0 checked=0
for lib in $(readelf -d "$TRAIN" | awk '/NEEDED/ {gsub(/[\[\]]/, "", $5); print $5}'); do
  path=$(ldd "$TRAIN" | awk -v l="$lib" '$1 == l {print $3}')
  pkg=""
  for p in "$path" "$(readlink -f "$path" 2>/dev/null)" "${path#/usr}" "/usr$path"; do  # merged /usr: dpkg knows one spelling
    [ -n "$p" ] && [ -z "$pkg" ] && pkg=$(dpkg -S "$p" 2>/dev/null | head -1 | cut -d: -f1 || true)
  done
  if [ -z "$pkg" ]; then
    pkg=$(dpkg -S "*/$lib" 2>/dev/null | head -1 | cut -d: -f1 || true)
  fi
  if [ -z "$pkg" ]; then
    case "$lib" in
      libnccl*|libcudart*|libcuda*) echo "ok   $lib: CUDA/NCCL (no package; the GPU machine's CUDA or torch's wheels)"; continue ;;
      *) echo "FAIL $lib: owned by no package"; missing=$((missing + 1)); continue ;;
    esac
  fi
  checked=$((checked + 1))
  if grep -Eq "$PROVIDED" <<<"$pkg"; then
    echo "ok   $lib: $pkg (provided by the GPU machine or left out of its build)"
  elif grep -qx "$pkg" <<<"$KIT"; then  # no pipe: grep -q exiting early would SIGPIPE echo (pipefail)
    echo "ok   $lib: $pkg (in the kit)"
  else
    echo "FAIL $lib: $pkg is not in scripts/gpu-kit's set"
    missing=$((missing + 1))
  fi
done
[ "$checked" -gt 5 ] || { echo "FAIL: only $checked libraries checked"; exit 1; }
[ "$missing" -eq 0 ] || { echo "FAIL: $missing libraries not covered"; exit 1; }

bash -n bench/gpu_check.sh
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
  echo "this machine has a GPU: the refusal is not checked here"
  exit 0
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
set +e
RETINA_GPU_PREFIX=$OUT/prefix RETINA_GPU_BUILD=$OUT/build bench/gpu_check.sh "$OUT/figures" > "$OUT/log" 2>&1
rc=$?
set -e
cat "$OUT/log"
[ "$rc" -eq 3 ] || { echo "FAIL: gpu_check.sh exited $rc without a GPU, not 3"; exit 1; }
grep -q '"error": "no NVIDIA GPU' "$OUT/figures/figures.json" || { echo "FAIL: figures.json does not name the missing GPU"; exit 1; }
[ ! -e "$OUT/prefix" ] && [ ! -e "$OUT/build" ] || { echo "FAIL: it unpacked or configured before refusing"; exit 1; }
echo "PASS: $checked libraries covered; gpu_check.sh refuses without a GPU"
