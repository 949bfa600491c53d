#!/usr/bin/env bash
# Like-for-like fine-tuning check (issue 20, item 4): our `retina-train`
# against a Python loop written from METHOD.md (bench/py/recipe_reference.py),
# on the same labelled synthetic benchmark, with the same recipe, seeds and
# iterations; both scored by the same evaluate job on the held-out volume.
#
#   bench/recipe_bench.sh [--build build] [--iters 300] [--batch 8] [--seeds 3] [--work DIR]
#
# Prints one line per run and a table: recipe x implementation, mean and
# standard deviation of the held-out IoU over the seeds, and the difference of
# the means against the pooled seed noise. CPU, tiny model at 64 px on 128 px
# tiles (the paper's 224 windows on 512 tiles, scaled). ~25 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build ITERS=300 BATCH=8 SEEDS=3 WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    *) echo "recipe_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${RETINA_PYTHON3:-/usr/bin/python3}
T=$BUILD/trainer
[ -x "$T/retina-train" ] || { echo "recipe_bench.sh: $T/retina-train not built" >&2; exit 2; }
if [ -z "$WORK" ]; then WORK=$(mktemp -d /tmp/recipe-bench.XXXXXX); fi
STORE=$WORK/store
mkdir -p "$STORE/datasets"
export OMP_NUM_THREADS=2

if [ ! -f "$STORE/datasets/synth/manifest.json" ]; then
  "$T/retina-synth" benchmark --out "$WORK/raw" --train 3 --test 1 --shape 16,256,256 --seed 0 > /dev/null
  "$T/retina-shard" import --kind folder --labels index --classes 2 --input "$WORK/raw" \
    --out "$STORE/datasets/synth" --size 128 > /dev/null
fi
read -r MEAN STD < <("$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['mean'], m['std'])" \
  "$STORE/datasets/synth/manifest.json")

recipe_keys() {  # the recipe as finetune keys (the Python loop's, stated in recipe_reference.py)
  if [ "$1" = paper ]; then
    echo "crop: resized, crop_scale: [0.08, 1], crop_ratio: [0.5, 1.5], rotate_p: 0.5, rotate_limit: 180, rotate90_p: 0, brightness_contrast_p: 0.5"
  else
    echo "crop: random, rotate_p: 0, rotate90_p: 1, brightness_contrast_p: 0"
  fi
}

score() {  # JOB WEIGHTS -> mean IoU of an evaluate job on synth-test
  cat > "$WORK/$1.yaml" <<EOF
kind: evaluate
model: {name: tiny, image_size: 64, classes: 1}
data: {dataset: synth-test, mean: $MEAN, std: $STD}
evaluate: {checkpoint: $2, mode: stack, overlap: 0.5}
EOF
  "$T/retina-train" run --config "$WORK/$1.yaml" --store "$STORE" --job "$1" > "$WORK/$1.log" 2>&1
  "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['mean_iou'])" "$STORE/jobs/$1/eval.json"
}

RESULTS=$WORK/results.tsv
: > "$RESULTS"
for recipe in plain paper; do
  for seed in $(seq 1 "$SEEDS"); do
    job=ours-$recipe-$seed
    if [ ! -f "$STORE/jobs/$job/checkpoints/LATEST" ]; then
      cat > "$WORK/$job.yaml" <<EOF
kind: finetune
seed: $seed
model: {name: tiny, image_size: 64, classes: 1}
data: {dataset: synth, mean: $MEAN, std: $STD, loader_threads: 1}
runtime: {device: cpu, threads: 2}
finetune: {init: random, iters: $ITERS, global_batch: $BATCH, save_every_iters: $ITERS, eval_every_iters: 0,
           hflip_p: 0.5, vflip_p: 0.5, foreground_crop_p: 0, $(recipe_keys $recipe)}
EOF
      t0=$(date +%s)
      "$T/retina-train" run --config "$WORK/$job.yaml" --store "$STORE" --job "$job" > "$WORK/$job.log" 2>&1
      t_ours=$(( $(date +%s) - t0 ))
    else
      t_ours=nan
    fi
    iou=$(score "eval-$job" "jobs/$job/checkpoints/LATEST")
    printf '%s\tours\t%s\t%s\t%s\n' "$recipe" "$seed" "$iou" "$t_ours" | tee -a "$RESULTS"

    pt=$WORK/py-$recipe-$seed.pt
    if [ ! -f "$pt" ]; then
      t0=$(date +%s)
      "$PY" bench/py/recipe_reference.py "$STORE/datasets/synth" "$pt" --recipe "$recipe" --iters "$ITERS" \
        --batch "$BATCH" --seed "$seed" --threads 2 > "$WORK/py-$recipe-$seed.log" 2>&1
      t_py=$(( $(date +%s) - t0 ))
    else
      t_py=nan
    fi
    iou=$(score "eval-py-$recipe-$seed" "$pt")
    printf '%s\tpython\t%s\t%s\t%s\n' "$recipe" "$seed" "$iou" "$t_py" | tee -a "$RESULTS"
  done
done

"$PY" - "$RESULTS" "$ITERS" "$BATCH" <<'EOF'
import statistics as st, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = {}
for recipe, impl, seed, iou, secs in rows:
    by.setdefault((recipe, impl), []).append(float(iou))
print(f"\nheld-out IoU, tiny model, {sys.argv[2]} iterations x batch {sys.argv[3]}, random init")
print("| recipe | ours (mean ± sd) | Python from METHOD.md (mean ± sd) | difference | pooled seed sd | per-seed ours / Python |")
print("|---|---|---|---|---|---|")
for recipe in ("plain", "paper"):
    a, b = by.get((recipe, "ours"), []), by.get((recipe, "python"), [])
    if len(a) < 2 or len(b) < 2:
        continue
    pooled = ((st.variance(a) + st.variance(b)) / 2) ** 0.5
    print(f"| {recipe} | {st.mean(a):.4f} ± {st.stdev(a):.4f} | {st.mean(b):.4f} ± {st.stdev(b):.4f} | "
          f"{st.mean(a) - st.mean(b):+.4f} | {pooled:.4f} | {' '.join(f'{x:.3f}' for x in a)} / "
          f"{' '.join(f'{x:.3f}' for x in b)} |")
EOF
echo "work directory: $WORK"
