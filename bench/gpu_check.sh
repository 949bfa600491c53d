#!/usr/bin/env bash
# The GPU kit's check (run on the GPU machine, from the repository root,
# carrying gpu-kit/ made by scripts/gpu-kit on a Debian machine):
#
#   bench/gpu_check.sh OUTDIR
#
# 1. refuses, naming what is missing, without an NVIDIA GPU that python3's
#    torch sees, or without gpu-kit/debs (exit 3; OUTDIR/figures.json says why);
# 2. unpacks the .debs into a prefix (never over /), configures the trainer
#    against torch's libtorch (RETINA_BUILD_SERVICES=OFF, no MPI) and builds
#    only what it runs, with 16 jobs;
# 3. runs, in order of value, each under its own time limit: the gpu-labelled
#    tests, the model step in bf16 and fp32 at batch 16/32/64 (images/s, MFU
#    against a bf16 GEMM of the same run and the 989 TFLOP/s peak), the data
#    pipeline feeding the GPU, the NCCL smoke (in the tests), the model
#    server's core (bench/serve_bench --transport inproc).
# Logs and figures go to OUTDIR as they come (a cut-off run still reports):
# OUTDIR/gpu_check.log, build.log, gpu_tests.{log,json}, step_*.json,
# pipeline.log, part-serve.json and OUTDIR/figures.json (merged after each stage).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${RETINA_PYTHON3:-python3}
PREFIX=${RETINA_GPU_PREFIX:-/tmp/retina-gpu-prefix}
BUILD=${RETINA_GPU_BUILD:-build-gpu}
T0=$(date +%s)

log() { echo "gpu_check [$(( $(date +%s) - T0 )) s]: $*" | tee -a "$OUT/gpu_check.log"; }
merge() {  # figures.json = every part written so far
  "$PY" - "$OUT" <<'EOF' 2>/dev/null || true
import glob, json, os, sys
out = sys.argv[1]
fig = {}
for f in sorted(glob.glob(os.path.join(out, "part-*.json"))):
    try:
        fig[os.path.basename(f)[5:-5]] = json.load(open(f))
    except Exception as e:
        fig[os.path.basename(f)[5:-5]] = {"unreadable": str(e)}
json.dump(fig, open(os.path.join(out, "figures.json"), "w"), indent=2)
EOF
}
part() {  # part NAME JSON_TEXT
  printf '%s\n' "$2" > "$OUT/part-$1.json"
  merge
}
refuse() {
  log "REFUSED: $1"
  printf '{"error": "%s"}\n' "$(printf '%s' "$1" | tr '"\\\n' "'/ ")" > "$OUT/figures.json"
  exit 3
}

# 1. The GPU and the kit.
command -v nvidia-smi > /dev/null 2>&1 || refuse "no NVIDIA GPU: nvidia-smi is not installed"
nvidia-smi -L > "$OUT/nvidia-smi.txt" 2>&1 || refuse "no NVIDIA GPU: nvidia-smi -L fails ($(head -c 200 "$OUT/nvidia-smi.txt"))"
grep -q '^GPU ' "$OUT/nvidia-smi.txt" || refuse "no NVIDIA GPU: nvidia-smi lists none"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null ||
  refuse "$PY's torch sees no CUDA device (or has no torch)"
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
ls gpu-kit/debs/*.deb > /dev/null 2>&1 || refuse "gpu-kit/debs has no .deb: run scripts/gpu-kit on a Debian machine and carry gpu-kit"
case "$PREFIX" in /|/usr|/usr/*|"") refuse "RETINA_GPU_PREFIX=$PREFIX: never unpack over the system" ;; esac
log "$(head -1 "$OUT/nvidia-smi.txt"); torch $("$PY" -c 'import torch; print(torch.__version__)') at $TORCH_PREFIX"
part machine "{\"gpu\": \"$(head -1 "$OUT/nvidia-smi.txt" | sed 's/"/ /g')\", \"torch\": \"$("$PY" -c 'import torch; print(torch.__version__)')\"}"

# 2. Unpack, configure, build.
mkdir -p "$PREFIX"
for deb in gpu-kit/debs/*.deb; do
  if command -v dpkg-deb > /dev/null 2>&1; then
    dpkg-deb -x "$deb" "$PREFIX"
  else  # an ar archive holding data.tar.*; Python's tarfile reads it
    "$PY" - "$deb" "$PREFIX" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
pos = 8
while pos < len(data):
    name, size = data[pos:pos + 16].decode().strip(), int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
    pos += 60 + size + (size & 1)
EOF
  fi
done
log "unpacked $(ls gpu-kit/debs/*.deb | wc -l) packages into $PREFIX"
LIB=$PREFIX/usr/lib/x86_64-linux-gnu
NCCL_HOME=$("$PY" -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || echo /usr/local/cuda)
export PKG_CONFIG_SYSROOT_DIR=$PREFIX PKG_CONFIG_LIBDIR=$LIB/pkgconfig:$PREFIX/usr/share/pkgconfig
# Not PATH: the kit's h5cc would print the build machine's /usr paths.
export LD_LIBRARY_PATH=$LIB:$LIB/hdf5/serial:$NCCL_HOME/lib:${LD_LIBRARY_PATH:-}
export NCCL_HOME CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
timeout 60 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRETINA_BUILD_SERVICES=OFF \
  -DRETINA_WITH_MPI=OFF -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$PREFIX/usr" -DCMAKE_LIBRARY_PATH="$LIB;$LIB/hdf5/serial" \
  -DCMAKE_INCLUDE_PATH="$PREFIX/usr/include;$PREFIX/usr/include/hdf5/serial" -DHDF5_ROOT="$PREFIX/usr" \
  -DPKG_CONFIG_EXECUTABLE="$PREFIX/usr/bin/pkgconf" -DRETINA_PYTHON3="$PY" > "$OUT/build.log" 2>&1 ||
  { log "configure failed: tail of build.log:"; tail -20 "$OUT/build.log" | tee -a "$OUT/gpu_check.log"; part build '{"ok": false, "stage": "configure"}'; exit 1; }
timeout 200 cmake --build "$BUILD" -j 16 --target trainer_gpu_tests model_step_bench data_pipeline_bench serve_bench >> "$OUT/build.log" 2>&1 ||
  { log "build failed: tail of build.log:"; grep -E "error" "$OUT/build.log" | head -20 | tee -a "$OUT/gpu_check.log"; part build '{"ok": false, "stage": "build"}'; exit 1; }
log "built in $(( $(date +%s) - T0 )) s"
part build "{\"ok\": true, \"seconds\": $(( $(date +%s) - T0 ))}"

# 3. What it measures.
timeout 90 "$BUILD/tests/trainer_gpu_tests" --gtest_output="json:$OUT/gpu_tests.json" 2>&1 | tee "$OUT/gpu_tests.log" |
  grep -E '^(CUDA|bf16|augmentation|NCCL)|^\[  (PASSED|FAILED|SKIPPED)' | tee -a "$OUT/gpu_check.log"
"$PY" - "$OUT" <<'EOF' 2>/dev/null
import json, os, re, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "gpu_tests.json")))
lines = [l for l in open(os.path.join(out, "gpu_tests.log")) if re.match(r"^(CUDA|bf16|augmentation|NCCL)", l)]
json.dump({"tests": r.get("tests"), "failures": r.get("failures"), "figures": [l.strip() for l in lines]},
          open(os.path.join(out, "part-gpu_tests.json"), "w"), indent=2)
EOF
merge
for precision in bf16 fp32; do
  log "model step, $precision, batch 16/32/64"
  timeout 75 "$BUILD/bench/model_step_bench" --device cuda --precision "$precision" --batches 16,32,64 --steps 10 \
    --json "$OUT/part-step_$precision.json" 2>&1 | tee -a "$OUT/gpu_check.log"
  merge
done
log "data pipeline feeding the GPU"
timeout 60 "$BUILD/bench/data_pipeline_bench" --device cuda --images 4096 --batch 32 --floor 0 2>&1 |
  tee "$OUT/pipeline.log" | tee -a "$OUT/gpu_check.log"
"$PY" - "$OUT" <<'EOF' 2>/dev/null
import json, os, re, sys
out = sys.argv[1]
text = open(os.path.join(out, "pipeline.log")).read()
fig = {}
m = re.search(r"([\d.]+) images/s with sample checks", text)
if m: fig["pipeline_images_per_s"] = float(m.group(1))
m = re.search(r"model consumes ([\d.]+) images/s .*pipeline / model = ([\d.]+)x", text)
if m: fig.update(model_images_per_s=float(m.group(1)), pipeline_over_model=float(m.group(2)))
json.dump(fig, open(os.path.join(out, "part-pipeline.json"), "w"), indent=2)
EOF
merge
# The model server's core in process (the kit builds no gRPC; the gRPC hop is
# measured on CPU): latency against a pure forward, batching on/off, peak RSS.
log "model server (serving core): latency vs pure forward, batching on/off"
timeout 60 "$BUILD/bench/serve_bench" --transport inproc --device cuda --threads 4 --models tiny,r50-vit-b16 \
  --reps 10 --requests 128 --json "$OUT/part-serve.json" 2>&1 | grep -v '^I1' | tee -a "$OUT/gpu_check.log"
merge
log "done in $(( $(date +%s) - T0 )) s; figures: $OUT/figures.json"
cat "$OUT/figures.json"
