#!/usr/bin/env bash
# BioImage.IO packages out and in (ctest bioimageio_export_import;
# docs/models.md "BioImage.IO"):
#   1. retina-export writes a package of a tiny fine-tune, and the Python
#      peer (validate_package.py: torch, PyYAML, numpy) validates it as a
#      consumer does and runs its model test;
#   2. three planted errors (a wrong sha256, a missing axis, weights that do
#      not match the test tensors) each fail the peer, and our import;
#   3. import: retina-infer with the package equals retina-infer with the
#      checkpoint, bitwise (labels and probabilities); a fine-tune from the
#      package records it as its init.
#
#   tests/bioimageio/package_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
B=$(cd "$1" && pwd)
S=$(cd "$2" && pwd)
PY=${RETINA_PYTHON3:-/usr/bin/python3}
T=$B/trainer
W=$(mktemp -d /tmp/retina-bioimageio-test-XXXXXX)
trap 'rm -rf "$W"' EXIT
export OMP_NUM_THREADS=1

"$T/retina-synth" benchmark --out "$W/raw" --train 1 --test 1 --shape 4,128,128 --seed 1 >/dev/null
"$T/retina-shard" import --kind folder --input "$W/raw" --out "$W/store/datasets/mito" --size 64 >/dev/null
cat >"$W/ft.yaml" <<'EOF'
kind: finetune
model: {name: tiny, image_size: 64, classes: 1}
data: {dataset: mito, loader_threads: 1}
finetune: {iters: 3, global_batch: 2, save_every_iters: 3}
runtime: {threads: 1}
EOF
for job in ft:0 other:5; do
  "$T/retina-train" run --config "$W/ft.yaml" --store "$W/store" --job "${job%%:*}" --set "seed=${job##*:}" \
    >"$W/${job%%:*}.log" 2>&1 || { tail -20 "$W/${job%%:*}.log"; exit 1; }
done
volume=$W/raw/test/images/$(ls "$W/raw/test/images" | head -n 1)

# 1. Export; the peer validates it and runs its model test.
"$T/retina-export" --weights jobs/ft --store "$W/store" -o "$W/pkg.zip" --author "RETINA tests" --sample "$volume" \
  --name "RETINA test model"
"$PY" "$S/tests/bioimageio/validate_package.py" "$W/pkg.zip"

# 2. Planted errors: each fails the peer and our import, saying why.
"$PY" - "$W" <<'EOF'
import hashlib, sys, zipfile, yaml
w = sys.argv[1]
src = zipfile.ZipFile(f"{w}/pkg.zip")
files = {n: src.read(n) for n in src.namelist()}
def write(name, changed):
    rdf = yaml.safe_load(files["rdf.yaml"])
    out = dict(files)
    changed(rdf, out)
    out["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False).encode()
    with zipfile.ZipFile(f"{w}/{name}.zip", "w") as z:
        for n, data in out.items():
            z.writestr(n, data)
def bad_sha(rdf, out):
    rdf["weights"]["pytorch_state_dict"]["sha256"] = "0" * 64
def no_axis(rdf, out):
    rdf["inputs"][0]["axes"] = [a for a in rdf["inputs"][0]["axes"] if a.get("id") != "y"]
def other_weights(rdf, out):
    other = open(f"{w}/store/jobs/other/checkpoints/step-00000003/model.pt", "rb").read()
    out["weights.pt"] = other
    rdf["weights"]["pytorch_state_dict"]["sha256"] = hashlib.sha256(other).hexdigest()
write("bad_sha", bad_sha)
write("no_axis", no_axis)
write("other_weights", other_weights)
EOF
expect_fail() {  # NAME PEER_MESSAGE IMPORT_MESSAGE
  if "$PY" "$S/tests/bioimageio/validate_package.py" "$W/$1.zip" >"$W/$1.peer" 2>&1; then
    echo "FAIL: the peer accepted $1.zip"; cat "$W/$1.peer"; exit 1
  fi
  grep -q "$2" "$W/$1.peer" || { echo "FAIL: the peer's reason for $1.zip lacks '$2'"; cat "$W/$1.peer"; exit 1; }
  if "$T/retina-infer" --weights "$W/$1.zip" -i "$volume" -o "$W/$1.tif" >"$W/$1.import" 2>&1; then
    echo "FAIL: retina-infer imported $1.zip"; exit 1
  fi
  grep -q "$3" "$W/$1.import" || { echo "FAIL: the import's reason for $1.zip lacks '$3'"; cat "$W/$1.import"; exit 1; }
  echo "ok: $1.zip fails the peer ($(grep -m1 -o "$2" "$W/$1.peer")) and the import ($(grep -m1 -o "$3" "$W/$1.import"))"
}
expect_fail bad_sha "does not match\|sha256 of 'weights.pt'" "does not match its sha256"
expect_fail no_axis "space axes y and x expected" "a TransUNet.s are batch, channel, y, x"
expect_fail other_weights "does not reproduce its test output" "does not reproduce the package's test output"

# 3. Import: the package segments exactly as the checkpoint does.
"$T/retina-infer" --weights jobs/ft --store "$W/store" -i "$volume" -o "$W/ckpt.h5" --probabilities >/dev/null 2>&1
"$T/retina-infer" --weights "$W/pkg.zip" -i "$volume" -o "$W/pkg.h5" --probabilities >/dev/null 2>&1
"$PY" - "$W" <<'EOF'
import sys, h5py, numpy as np
w = sys.argv[1]
a, b = h5py.File(f"{w}/ckpt.h5"), h5py.File(f"{w}/pkg.h5")
names = []
a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) else None)
assert names, "no datasets in the checkpoint's prediction"
for n in names:
    x, y = a[n][()], b[n][()]
    assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f"{n} differs"
print(f"ok: retina-infer with the package equals the checkpoint bitwise ({', '.join(names)})")
EOF
sed -i 's/^finetune: .*/finetune: {iters: 1, global_batch: 2, init: INIT}/' "$W/ft.yaml"
sed -i "s|INIT|$W/pkg.zip|" "$W/ft.yaml"
"$T/retina-train" run --config "$W/ft.yaml" --store "$W/store" --job from-package >"$W/from.log" 2>&1 ||
  { tail -20 "$W/from.log"; exit 1; }
grep -q "\"init\": \"$W/pkg.zip\"" "$W/store/jobs/from-package/checkpoints/"step-*/state.json ||
  { echo "FAIL: the fine-tune from the package does not record it as its init"; cat "$W/store/jobs/from-package/checkpoints/"step-*/state.json; exit 1; }
echo "ok: a fine-tune from the package (finetune.init) records it as its init"
echo PASS
