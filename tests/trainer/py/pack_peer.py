"""Peer of the shard tests.

  pack_peer.py make INDIR          writes PNG/TIFF inputs of several sizes (PIL, tifffile)
  pack_peer.py check DATASET INDIR SIZE
      re-cuts every input with the documented rule (raster order, last
      row/column aligned to the border) using PIL/tifffile + numpy, and
      checks that the shards read with h5py hold exactly those patches and
      names, that every crc32 entry is zlib.crc32 of the sample's bytes,
      and that the manifest's mean/std equal numpy's.
  pack_peer.py offset SHARD        prints the file offset of the images dataset
  pack_peer.py strip SHARD MANIFEST
      rewrites SHARD without its crc32 dataset (as older versions packed)
      and updates its size and SHA-256 in MANIFEST
"""
import hashlib
import zlib
import glob
import json
import os
import sys

import h5py
import numpy as np
import tifffile
from PIL import Image


def origins(extent, size):
    out = list(range(0, extent - size + 1, size))
    if out and out[-1] + size < extent:
        out.append(extent - size)
    return out


def main():
    if sys.argv[1] == "make":
        d = sys.argv[2]
        rng = np.random.default_rng(11)
        for i, (h, w) in enumerate([(64, 64), (100, 70), (64, 130), (90, 90), (64, 64), (128, 64)]):
            img = (rng.random((h, w)) * 200 + np.arange(w)[None, :] % 50).astype(np.uint8)
            if i % 2:
                tifffile.imwrite(f"{d}/img{i:02d}.tif", img)
            else:
                Image.fromarray(img).save(f"{d}/img{i:02d}.png")
        return 0
    if sys.argv[1] == "offset":
        with h5py.File(sys.argv[2], "r") as h:
            print(h["images"].id.get_offset())
        return 0
    if sys.argv[1] == "strip":
        shard, manifest = sys.argv[2], sys.argv[3]
        with h5py.File(shard, "r") as h:
            data = {k: h[k][:] for k in h.keys() if k != "crc32"}
        with h5py.File(shard, "w") as h:
            for k, v in data.items():
                h.create_dataset(k, data=v)
        m = json.load(open(manifest))
        for s in m["shards"]:
            if s["file"] == os.path.basename(shard):
                raw = open(shard, "rb").read()
                s["bytes"], s["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
        json.dump(m, open(manifest, "w"))
        return 0
    ds, indir, size = sys.argv[2], sys.argv[3], int(sys.argv[4])
    files = sorted(glob.glob(f"{indir}/**/*.png", recursive=True) + glob.glob(f"{indir}/**/*.tif", recursive=True))
    patches, names = [], []
    for f in files:
        img = np.array(Image.open(f)) if f.endswith(".png") else tifffile.imread(f)
        for y in origins(img.shape[0], size):
            for x in origins(img.shape[1], size):
                patches.append(img[y:y + size, x:x + size])
                names.append(f"{os.path.basename(f)}:y{y}:x{x}")
    expected = np.stack(patches)
    m = json.load(open(f"{ds}/manifest.json"))
    got, got_names = [], []
    for s in m["shards"]:
        with h5py.File(f"{ds}/{s['file']}", "r") as h:
            assert h["images"].chunks is None, "images must be contiguous"
            got.append(h["images"][:])
            got_names += [n.decode() for n in h["names"][:]]
            for img, crc in zip(h["images"][:], h["crc32"][:]):
                if zlib.crc32(img.tobytes()) != int(crc):
                    print(f"{s['file']}: crc32 {int(crc):08x} is not zlib.crc32 of the sample", file=sys.stderr)
                    return 1
    got = np.concatenate(got)
    if got.shape != expected.shape or not np.array_equal(got, expected):
        print(f"patches differ: {got.shape} vs {expected.shape}", file=sys.stderr)
        return 1
    if got_names != names:
        print(f"names differ: {got_names[:3]} vs {names[:3]}", file=sys.stderr)
        return 1
    v = expected.astype(np.float64) / 255
    if abs(m["mean"] - v.mean()) > 1e-9 or abs(m["std"] - v.std()) > 1e-9:
        print(f"mean/std {m['mean']}/{m['std']} vs numpy {v.mean()}/{v.std()}", file=sys.stderr)
        return 1
    print(f"h5py: {len(got)} patches identical; mean/std match numpy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
