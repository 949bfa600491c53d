"""Writes EM-style files with independent tools for the reader tests:
PIL (PNG), tifffile (TIFF), h5py (HDF5), nibabel (NIfTI) and NRRD written by
hand from the format spec (raw and gzip). Also writes expected.npz (each
array's (z, y, x) bytes, key = file name with '.', ':', '/' -> '_') and meta.json
(shape and spacing per file).

  make_formats.py OUTDIR
"""
import gzip
import json
import struct
import sys
import zlib

import h5py
import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

out = sys.argv[1]
rng = np.random.default_rng(3)
expected, meta = {}, {}


def record(name, zyx, sp=None):
    # Raw native bytes: torch (the C++ test reads .npz into tensors) lacks uint16/uint64.
    expected[name.replace(".", "_").replace(":", "_").replace("/", "_")] = np.frombuffer(zyx.tobytes(), np.uint8)
    meta[name] = {"shape": list(zyx.shape), "spacing": sp}


img8 = rng.integers(0, 256, (37, 53), dtype=np.uint8)
Image.fromarray(img8).save(f"{out}/gray8.png")
record("gray8.png", img8[None])
img16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
Image.fromarray(img16).save(f"{out}/gray16.png")
record("gray16.png", img16[None])
rgb = np.repeat(img8[:, :, None], 3, axis=2)  # grey content stored as RGB
Image.fromarray(rgb).save(f"{out}/rgb.png")
record("rgb.png", img8[None])

tifffile.imwrite(f"{out}/page8.tif", img8)
record("page8.tif", img8[None])
tifffile.imwrite(f"{out}/page16.tiff", img16)
record("page16.tiff", img16[None])
stack = rng.integers(0, 256, (5, 24, 40), dtype=np.uint8)
tifffile.imwrite(f"{out}/stack.tif", stack, imagej=True, resolution=(1 / 0.004, 1 / 0.005),
                 metadata={"spacing": 0.05, "unit": "um"})
record("stack.tif", stack, [0.05, 0.005, 0.004])
tiled = rng.integers(0, 256, (40, 70), dtype=np.uint8)
tifffile.imwrite(f"{out}/tiled.tif", tiled, tile=(16, 32))
record("tiled.tif", tiled[None])
fimg = rng.random((12, 9), dtype=np.float32)
tifffile.imwrite(f"{out}/float.tif", fimg)
record("float.tif", fimg[None])

raw = rng.integers(0, 256, (4, 16, 20), dtype=np.uint8)
clefts = np.full((4, 16, 20), np.iinfo(np.uint64).max, dtype=np.uint64)
clefts[1:3, 5:9, 2:7] = 17
with h5py.File(f"{out}/cremi.h5", "w") as f:
    d = f.create_dataset("volumes/raw", data=raw)
    d.attrs["resolution"] = np.array([40.0, 4.0, 4.0])
    c = f.create_dataset("volumes/labels/clefts", data=clefts, compression="gzip")
    c.attrs["resolution"] = np.array([40.0, 4.0, 4.0])
    f.create_dataset("flat", data=img8)
record("cremi.h5:/volumes/raw", raw, [40.0, 4.0, 4.0])
record("cremi.h5:/volumes/labels/clefts", clefts, [40.0, 4.0, 4.0])
record("cremi.h5:/flat", img8[None])

vol = rng.integers(0, 256, (6, 11, 13), dtype=np.uint8)  # z, y, x
for name in ("vol.nii", "vol.nii.gz"):
    n = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.diag([0.5, 0.6, 0.7, 1.0]))
    n.header.set_zooms((0.5, 0.6, 0.7))
    nib.save(n, f"{out}/{name}")
    record(name, vol, [0.7, 0.6, 0.5])
mask = (rng.random((6, 11, 13)) > 0.7).astype(np.uint16)
nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0)), np.eye(4)), f"{out}/mask.nii.gz")
record("mask.nii.gz", mask)


def nrrd_header(a, encoding):
    return (f"NRRD0004\ntype: {'uint8' if a.dtype == np.uint8 else 'uint16'}\ndimension: 3\n"
            f"sizes: {a.shape[2]} {a.shape[1]} {a.shape[0]}\nspacings: 0.25 0.5 2\n"
            f"endian: little\nencoding: {encoding}\n\n").encode()


with open(f"{out}/vol.nrrd", "wb") as f:
    f.write(nrrd_header(vol, "raw") + vol.tobytes())
record("vol.nrrd", vol, [2.0, 0.5, 0.25])
vol16 = rng.integers(0, 65536, (3, 5, 7), dtype=np.uint16)
with open(f"{out}/volgz.nrrd", "wb") as f:
    f.write(nrrd_header(vol16, "gzip") + gzip.compress(vol16.astype("<u2").tobytes()))
record("volgz.nrrd", vol16, [2.0, 0.5, 0.25])

with open(f"{out}/truncated.png", "wb") as f:
    f.write(open(f"{out}/gray8.png", "rb").read()[:100])
with open(f"{out}/truncated.tif", "wb") as f:
    f.write(open(f"{out}/stack.tif", "rb").read()[:3000])
# Headers that declare far more than the file holds (readers_test
# HeaderSizes...): a chunked HDF5 dataset of 64 GiB in a few KB, a NIfTI of
# 2.7e13 voxels, a PNG and a TIFF of 10^10 pixels, a raw NRRD short of data.
with h5py.File(f"{out}/huge.h5", "w") as f:
    f.create_dataset("raw", (4096, 4096, 4096), np.uint8, chunks=(1, 64, 64))
hdr = nib.Nifti1Header()
hdr.set_data_shape((30000, 30000, 30000))
hdr.set_data_dtype(np.uint8)
hdr["vox_offset"] = 352
hdr["magic"] = b"n+1"
with open(f"{out}/huge.nii", "wb") as f:
    f.write(hdr.binaryblock + b"\0" * 4 + b"\1" * 16)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


with open(f"{out}/huge.png", "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
entries = [(256, 4, 100000), (257, 4, 100000), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 9 * 12 + 4),
           (277, 3, 1), (278, 4, 100000), (279, 4, 4000000000)]
ifd = struct.pack("<H", len(entries)) + b"".join(
    struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    for tag, kind, value in entries) + struct.pack("<I", 0)
with open(f"{out}/huge.tif", "wb") as f:
    f.write(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 64)
with open(f"{out}/short.nrrd", "wb") as f:
    f.write(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 100 100 10\nencoding: raw\n\n" + b"\0" * 10)

np.savez(f"{out}/expected.npz", **expected)
json.dump(meta, open(f"{out}/meta.json", "w"))
