"""Benchmark-shaped inputs for the import tests, written with nibabel, h5py, PIL.

  make_benchmarks.py OUTDIR
  -> OUTDIR/urocell/{train,test}/{images,masks}/vol*.nii.gz   (isotropic volumes, 3 classes)
     OUTDIR/cremi/{train,test}/sample_*.h5                     (raw + uint64 clefts)
     OUTDIR/perez/{train,test}/{images,masks}/*.png             (2D, masks 0/255)
"""
import os
import sys

import h5py
import nibabel as nib
import numpy as np
from PIL import Image

out = sys.argv[1]
rng = np.random.default_rng(5)
for split, n in (("train", 2), ("test", 1)):
    for sub in ("images", "masks"):
        os.makedirs(f"{out}/urocell/{split}/{sub}", exist_ok=True)
        os.makedirs(f"{out}/perez/{split}/{sub}", exist_ok=True)
    os.makedirs(f"{out}/cremi/{split}", exist_ok=True)
    for i in range(n):
        vol = rng.integers(0, 256, (20, 30, 40), dtype=np.uint8)       # z, y, x
        lab = rng.integers(0, 3, (20, 30, 40), dtype=np.uint8)
        for sub, a in (("images", vol), ("masks", lab)):
            nib.save(nib.Nifti1Image(np.ascontiguousarray(a.transpose(2, 1, 0)), np.eye(4)),
                     f"{out}/urocell/{split}/{sub}/vol{i}.nii.gz")
        raw = rng.integers(0, 256, (3, 50, 60), dtype=np.uint8)
        clefts = np.full(raw.shape, np.iinfo(np.uint64).max, dtype=np.uint64)
        clefts[:, 10:20, 10:30] = 3
        with h5py.File(f"{out}/cremi/{split}/sample_{split}{i}.h5", "w") as f:
            f.create_dataset("volumes/raw", data=raw).attrs["resolution"] = [40.0, 4.0, 4.0]
            f.create_dataset("volumes/labels/clefts", data=clefts).attrs["resolution"] = [40.0, 4.0, 4.0]
        img = rng.integers(0, 256, (48, 70), dtype=np.uint8)
        mask = (rng.random((48, 70)) > 0.8).astype(np.uint8) * 255
        Image.fromarray(img).save(f"{out}/perez/{split}/images/img{i}.png")
        Image.fromarray(mask).save(f"{out}/perez/{split}/masks/img{i}.png")
