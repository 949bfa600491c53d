#!/usr/bin/env bash
# Inference throughput on this CPU (voxels/s, as printed by retina-infer) and
# peak resident memory:
#   - r50-vit-b16, 2D: one 512x512 image (the ISBI sample when ../shared/data has
#     it, else a synthetic one), overlap 0.5;
#   - r50-vit-b16, orthoplane: a 4x96x96 synthetic volume, overlap 0.7;
#   - tiny, stack and orthoplane: a 32x512x512 volume (8.4 M voxels), for memory.
# Weights are freshly initialised (speed does not depend on their values).
#   bench/infer_bench.sh [BUILD_DIR]
set -euo pipefail
BUILD_DIR=${1:-build}
bin=$BUILD_DIR/trainer
work=$(mktemp -d /tmp/retina-infer-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
"$bin/retina-train" model init --model r50-vit-b16 --classes 1 --seed 0 --out "$work/r50.pt" >/dev/null
"$bin/retina-train" model init --model tiny --image-size 64 --classes 2 --seed 0 --out "$work/tiny.pt" >/dev/null
img=$(dirname "$0")/../../shared/data/isbi2012-em-unlabeled/00.png
if [[ ! -f $img ]]; then
  "$bin/retina-synth" images --out "$work/img" --count 1 --size 512 >/dev/null
  img=$work/img/synth-00000.tif
fi
"$bin/retina-synth" benchmark --out "$work/vol" --train 0 --test 1 --shape 4,96,96 >/dev/null
"$bin/retina-synth" benchmark --out "$work/big" --train 0 --test 1 --shape 32,512,512 >/dev/null
norm=(--mean 0.5 --std 0.2)
"$bin/retina-infer" --weights "$work/r50.pt" --input "$img" --out "$work/a.tif" --overlap 0.5 "${norm[@]}"
"$bin/retina-infer" --weights "$work/r50.pt" --input "$work/vol/test/images/vol0.tif" --out "$work/b.tif" \
  --mode orthoplane "${norm[@]}"
"$bin/retina-infer" --weights "$work/tiny.pt" --input "$work/big/test/images/vol0.tif" --out "$work/c.tif" \
  --mode stack --overlap 0.5 "${norm[@]}"
"$bin/retina-infer" --weights "$work/tiny.pt" --input "$work/big/test/images/vol0.tif" --out "$work/d.h5" \
  --mode orthoplane --overlap 0.5 "${norm[@]}"
