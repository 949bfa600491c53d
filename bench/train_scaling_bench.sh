#!/usr/bin/env bash
# Training throughput of the r50-vit-b16 pre-training step on this CPU:
#   A: 1 rank x 2 threads, global batch 4
#   B: 2 ranks x 1 thread (Gloo, SyncBatchNorm, bucketed reducer), global batch 4
# Prints images/s (steps after the first two), the scaling ratio B/A and B's
# exposed communication fraction (allreduce_s / step time), from metrics.csv.
#   bench/train_scaling_bench.sh [BUILD_DIR] [STEPS]
set -euo pipefail
BUILD_DIR=${1:-build}
STEPS=${2:-6}
bin=$BUILD_DIR/trainer
work=$(mktemp -d /tmp/retina-scaling-XXXXXX)
trap 'rm -rf "$work"' EXIT

"$bin/retina-synth" images --out "$work/raw" --count $((STEPS * 4)) --size 224 >/dev/null
"$bin/retina-shard" pack --input "$work/raw" --out "$work/store/datasets/em" --size 224 >/dev/null
cat > "$work/job.yaml" <<YAML
kind: pretrain
model: {name: r50-vit-b16, image_size: 224}
data: {dataset: em, loader_threads: 1}
pretrain: {epochs: 1, global_batch: 4, checkpoint_every_epochs: 1000}
runtime: {threads: 0}
YAML

stats() {  # mean images/s and exposed all-reduce fraction after step 2
  awk -F, 'NR>3 {ips+=$5; ar+=$7; t+=4/$5; n++} END {printf "%.3f %.3f", ips/n, (t>0 ? ar/t : 0)}' "$1"
}
OMP_NUM_THREADS=2 "$bin/retina-train" run --config "$work/job.yaml" --store "$work/store" --job one >/dev/null 2>&1
read -r a_ips _ <<< "$(stats "$work/store/jobs/one/metrics.csv")"
port=$((20000 + RANDOM % 20000))
for r in 1 0; do
  OMP_NUM_THREADS=1 RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$bin/retina-train" run --config "$work/job.yaml" --store "$work/store" --job two >/dev/null 2>&1 &
done
wait
read -r b_ips b_exposed <<< "$(stats "$work/store/jobs/two/metrics.csv")"
echo "r50-vit-b16 pre-training step, global batch 4, 224x224, $STEPS steps:"
echo "  1 rank x 2 threads : $a_ips images/s"
echo "  2 ranks x 1 thread : $b_ips images/s (Gloo), exposed all-reduce fraction $b_exposed"
awk -v a="$a_ips" -v b="$b_ips" 'BEGIN {printf "  scaling ratio (2x1 / 1x2): %.2f\n", b / a}'
