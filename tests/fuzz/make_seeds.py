"""Writes the fuzz targets' seed corpus (tests/fuzz/README.md), one folder
per target under OUT, from the formats' own tools and the project's own
programs:

  make_seeds.py OUT SOURCE_DIR [TRAINER_BIN_DIR]

- TIFF, PNG, HDF5, NIfTI, NRRD: what tests/trainer/py/make_formats.py writes
  with tifffile, PIL, h5py, nibabel and the NRRD spec;
- Zarr: arrays python3-zarr writes (raw, zlib, blosc; 2D and 3D), packed as
  `.zarray` NUL chunk NUL `.zattrs`;
- checkpoints: state dicts Python's torch.save writes (when torch imports);
- job YAML: every job file the project ships (configs/, docs/examples/);
- records: with TRAINER_BIN_DIR, a dataset packed by retina-shard (its
  manifest.json) and a 2-step retina-train pre-training run (its events.jsonl
  lines and state.json); always a hand-written eval.json.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

out, src = sys.argv[1], sys.argv[2]
bins = sys.argv[3] if len(sys.argv) > 3 else None
work = tempfile.mkdtemp(prefix="retina-seeds-")


def seed(target, name, data):
    os.makedirs(f"{out}/{target}", exist_ok=True)
    with open(f"{out}/{target}/{name}", "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


subprocess.run([sys.executable, f"{src}/tests/trainer/py/make_formats.py", work], check=True)
for path in sorted(glob.glob(f"{work}/*")):
    name = os.path.basename(path)
    for ext, target in [(".tif", "fuzz_tiff"), (".png", "fuzz_png"), (".h5", "fuzz_hdf5"), (".nii", "fuzz_nifti"),
                        (".nii.gz", "fuzz_nifti"), (".nrrd", "fuzz_nrrd")]:
        if name.endswith(ext):
            seed(target, name, read(path))
seed("fuzz_nrrd", "detached.nhdr", b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 16 16\nencoding: raw\n"
     b"data file: data.raw\n\n")

import numpy as np  # noqa: E402
import zarr  # noqa: E402
from numcodecs import Blosc, Zlib  # noqa: E402

rng = np.random.default_rng(5)
for i, (shape, chunks, compressor, dtype) in enumerate([
        ((16, 16), (16, 16), None, np.uint8), ((4, 16, 16), (2, 8, 8), Zlib(level=1), np.uint8),
        ((4, 16, 16), (2, 16, 16), Blosc(cname="lz4"), np.uint8), ((8, 8), (4, 4), None, np.float32)]):
    path = f"{work}/z{i}.zarr"
    z = zarr.open_array(path, mode="w", shape=shape, chunks=chunks, dtype=dtype, compressor=compressor)
    z[:] = rng.integers(0, 255, shape).astype(dtype)
    first = ".".join("0" for _ in shape)
    attrs = {"multiscales": [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"[-len(shape):]],
                              "datasets": [{"path": "0", "coordinateTransformations": [
                                  {"type": "scale", "scale": [1.0] * len(shape)}]}]}]}
    seed("fuzz_zarr", f"z{i}", read(f"{path}/.zarray") + b"\0" + read(f"{path}/{first}") + b"\0" +
         json.dumps(attrs).encode())

try:
    import torch
    torch.manual_seed(0)
    for i, sd in enumerate([{"w": torch.randn(3, 4), "b": torch.zeros(4, dtype=torch.float64)},
                            torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).state_dict()]):
        torch.save(sd, f"{work}/c{i}.pt")
        seed("fuzz_checkpoint", f"c{i}.pt", read(f"{work}/c{i}.pt"))
except ImportError:
    print("make_seeds: no torch: the checkpoint target starts from no seed", file=sys.stderr)

for path in sorted(glob.glob(f"{src}/configs/*.yaml") + glob.glob(f"{src}/docs/examples/*.yaml")):
    seed("fuzz_job_yaml", os.path.basename(path), read(path))

seed("fuzz_records", "eval.json", json.dumps({
    "checkpoint": "jobs/x/checkpoints/step-00000002", "mode": "stack", "overlap": 0.5, "mean_iou": 0.5,
    "mean_iou_per_class": {"1": 0.5}, "items": [{"source": "a.tif", "classes": [
        {"class": 1, "iou": 0.5, "f1": 0.6, "precision": 0.7, "recall": 0.8, "mfd": 1.5}]}]}).encode())
if bins:
    raw, store = f"{work}/raw", f"{work}/store"
    subprocess.run(f"{bins}/retina-synth images --out {raw} --count 2 --size 64 && "
                   f"{bins}/retina-shard pack --input {raw} --out {store}/datasets/em --size 64", shell=True,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seed("fuzz_records", "manifest.json", read(f"{store}/datasets/em/manifest.json"))
    with open(f"{work}/job.yaml", "w") as f:
        f.write("kind: pretrain\nmodel: {name: tiny, image_size: 32}\ndata: {dataset: em, loader_threads: 1}\n"
                "pretrain: {epochs: 1, global_batch: 2, checkpoint_every_epochs: 1}\nruntime: {threads: 1}\n")
    subprocess.run([f"{bins}/retina-train", "run", "--config", f"{work}/job.yaml", "--store", store, "--job", "seed"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for i, line in enumerate(read(f"{store}/jobs/seed/events.jsonl").splitlines()):
        seed("fuzz_records", f"event-{i}.json", line)
    for path in glob.glob(f"{store}/jobs/seed/checkpoints/step-*/state.json"):
        seed("fuzz_records", "state.json", read(path))
    for path in glob.glob(f"{store}/jobs/seed/checkpoints/step-*/model.pt"):
        seed("fuzz_checkpoint", "ours.pt", read(path))
shutil.rmtree(work)
