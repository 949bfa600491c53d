"""Real-peer checks of our Zarr/OME-Zarr and HDF5 output with Debian's
python3-zarr (numcodecs) and h5py.

  zarr_peer.py write DIR                  arrays written by zarr for our reader
  zarr_peer.py check-ome IMAGE RAW Z Y X UNIT SZ SY SX
      IMAGE is an OME-Zarr label image we wrote; RAW the expected level-0
      labels (uint8, C order, shape Z Y X). Checks the NGFF 0.4 rules that
      need no network, every level against a numpy mode-downsampling of the
      level above, and level 0 against RAW. Prints "ok levels=N".
  zarr_peer.py check-probs IMAGE C Z Y X DTYPE
      per-class probabilities image: axes c,z,y,x, dtype, values in range.
  zarr_peer.py check-uncertainty IMAGE PROBS LABELS Z Y X UNIT SZ SY SX
      an uncertainty map: NGFF 0.4 axes z,y,x with UNIT, scale = spacing,
      float16, the labels' level-0 chunks, and values equal (within float16
      rounding, 2^-11 relative) to numpy's entropy / log(C) of the float32
      probabilities image PROBS (one channel: p and 1 - p).
  zarr_peer.py check-h5 FILE UNIT SZ SY SX
      our HDF5 output: labels gzip-compressed and chunked by plane, with
      resolution, unit and element_size_um.
"""
import json
import os
import sys

import numpy as np
import zarr
from numcodecs import Blosc, Zlib


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


# zarr-python 3 (Debian 13) writes format 3 unless told, and takes
# `compressors=`; 2.x (Debian 12) writes format 2 and takes `compressor=`.
# Our reader reads format 2, so both peers write that.
ZARR3 = int(zarr.__version__.split(".")[0]) >= 3


def v2_array(parent, name, shape, chunks, codec, separator="."):
    """An empty uint8 format-2 array `name` under `parent` (a path or a group)."""
    if ZARR3:
        kw = dict(shape=shape, chunks=chunks, dtype="u1", compressors=codec, zarr_format=2,
                  chunk_key_encoding={"name": "v2", "separator": separator}, overwrite=True)
        if isinstance(parent, str):
            return zarr.create_array(store=os.path.join(parent, name), **kw)
        kw.pop("zarr_format")
        return parent.create_array(name, **kw)
    kw = dict(shape=shape, chunks=chunks, dtype="u1", compressor=codec, dimension_separator=separator)
    if isinstance(parent, str):
        return zarr.open_array(os.path.join(parent, name), mode="w", **kw)
    return parent.create_dataset(name, **kw)


def write(out):
    rng = np.random.default_rng(5)
    vol = rng.integers(0, 256, size=(7, 45, 61), dtype=np.uint8)
    v2_array(out, "zlib.zarr", vol.shape, (3, 16, 32), Zlib(level=3))[:] = vol
    v2_array(out, "blosc.zarr", vol.shape, (4, 20, 20), Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE))[:] = vol
    v2_array(out, "raw.zarr", vol.shape, (7, 45, 61), None)[:] = vol
    # An OME-Zarr image with a leading channel axis of 1 and nanometre units.
    g = zarr.open_group(os.path.join(out, "image.ome.zarr"), mode="w", **({"zarr_format": 2} if ZARR3 else {}))
    v2_array(g, "0", vol[None].shape, (1, 4, 32, 32), Zlib(level=1), separator="/")[:] = vol[None]
    g.attrs["multiscales"] = [{
        "version": "0.4", "name": "image",
        "axes": [{"name": "c", "type": "channel"}] +
                [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 30, 4, 4]}]}],
    }]
    vol.tofile(os.path.join(out, "expected.u8"))
    print("ok")


def mode_downsample(a, factors):
    """Most frequent label of each block; ties to the smallest label."""
    fz, fy, fx = factors
    oz, oy, ox = (-(-a.shape[0] // fz), -(-a.shape[1] // fy), -(-a.shape[2] // fx))
    out = np.zeros((oz, oy, ox), np.uint8)
    for z in range(oz):
        for y in range(oy):
            for x in range(ox):
                block = a[z * fz:(z + 1) * fz, y * fy:(y + 1) * fy, x * fx:(x + 1) * fx].ravel()
                counts = np.bincount(block, minlength=256)
                out[z, y, x] = int(np.argmax(counts))  # argmax takes the first (smallest) maximum
    return out


def check_ome(image, raw, z, y, x, unit, sz, sy, sx):
    shape = (int(z), int(y), int(x))
    spacing = [float(sz), float(sy), float(sx)]
    g = zarr.open_group(image, mode="r")
    attrs = g.attrs.asdict()
    ms = attrs.get("multiscales")
    if not isinstance(ms, list) or not ms:
        fail("no multiscales")
    m = ms[0]
    if m.get("version") != "0.4":
        fail("version %r" % m.get("version"))
    axes = m["axes"]
    if [a["name"] for a in axes] != ["z", "y", "x"] or any(a.get("type") != "space" for a in axes):
        fail("axes %r" % axes)
    for a in axes:
        if unit != "-" and a.get("unit") != unit:
            fail("unit %r, expected %r" % (a.get("unit"), unit))
    if "image-label" not in attrs:
        fail("no image-label")
    expected = np.fromfile(raw, dtype=np.uint8).reshape(shape)
    prev = None
    for level, d in enumerate(m["datasets"]):
        ts = d["coordinateTransformations"]
        if len(ts) != 1 or ts[0]["type"] != "scale" or len(ts[0]["scale"]) != 3:
            fail("level %d transformations %r" % (level, ts))
        arr = g[d["path"]]
        data = arr[:]
        if level == 0:
            if data.shape != shape or not np.array_equal(data, expected):
                fail("level 0 differs from the expected labels")
        else:
            factors = tuple(2 if n > 1 else 1 for n in prev.shape)
            if not np.array_equal(data, mode_downsample(prev, factors)):
                fail("level %d is not the mode downsampling of level %d" % (level, level - 1))
        prev = data
    # Scales: spacing x 2^level on every axis halved at each step.
    scale = spacing
    sizes = [g[d["path"]].shape for d in m["datasets"]]
    for level, d in enumerate(m["datasets"]):
        got = d["coordinateTransformations"][0]["scale"]
        if level:
            scale = [scale[a] * (2 if sizes[level - 1][a] > 1 else 1) for a in range(3)]
        if not np.allclose(got, scale):
            fail("level %d scale %r, expected %r" % (level, got, scale))
    print("ok levels=%d" % len(m["datasets"]))


def check_probs(image, c, z, y, x, dtype):
    g = zarr.open_group(image, mode="r")
    m = g.attrs["multiscales"][0]
    if [a["name"] for a in m["axes"]] != ["c", "z", "y", "x"] or m["axes"][0]["type"] != "channel":
        fail("axes %r" % m["axes"])
    a = g[m["datasets"][0]["path"]]
    if a.shape != (int(c), int(z), int(y), int(x)) or str(a.dtype) != dtype:
        fail("shape %r dtype %s" % (a.shape, a.dtype))
    v = a[:].astype(np.float64)
    top = 255 if dtype == "uint8" else 1
    if v.min() < 0 or v.max() > top:
        fail("values outside [0, %d]" % top)
    print("ok")


def check_uncertainty(image, probs, labels, z, y, x, unit, sz, sy, sx):
    g = zarr.open_group(image, mode="r")
    m = g.attrs["multiscales"][0]
    if m.get("version") != "0.4":
        fail("version %r" % m.get("version"))
    if [a["name"] for a in m["axes"]] != ["z", "y", "x"] or any(a.get("type") != "space" for a in m["axes"]):
        fail("axes %r" % m["axes"])
    if unit != "-" and any(a.get("unit") != unit for a in m["axes"]):
        fail("units %r, expected %r" % ([a.get("unit") for a in m["axes"]], unit))
    scale = m["datasets"][0]["coordinateTransformations"][0]["scale"]
    if not np.allclose(scale, [float(sz), float(sy), float(sx)]):
        fail("scale %r" % scale)
    a = g[m["datasets"][0]["path"]]
    if a.shape != (int(z), int(y), int(x)) or str(a.dtype) != "float16":
        fail("shape %r dtype %s" % (a.shape, a.dtype))
    chunks = zarr.open_group(labels, mode="r")["0"].chunks
    if a.chunks != chunks:
        fail("chunks %r, the labels' are %r" % (a.chunks, chunks))
    pg = zarr.open_group(probs, mode="r")
    p = pg[pg.attrs["multiscales"][0]["datasets"][0]["path"]][:].astype(np.float64)
    if p.shape[0] == 1:
        p = np.concatenate([1 - p, p], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    expected = np.clip(-terms.sum(axis=0) / np.log(p.shape[0]), 0, 1)
    got = a[:].astype(np.float64)
    err = np.abs(got - expected).max()
    if err > 2.0 ** -11:
        fail("uncertainty differs from numpy's entropy by %g" % err)
    print("ok max_err=%.3g min=%.3f max=%.3f" % (err, got.min(), got.max()))


def check_h5(path, unit, sz, sy, sx):
    import h5py
    with h5py.File(path, "r") as f:
        d = f["labels"]
        if d.compression != "gzip":
            fail("labels compression %r" % d.compression)
        if d.chunks is None or d.chunks[0] != 1:
            fail("labels chunks %r" % (d.chunks,))
        res = list(d.attrs["resolution"])
        if not np.allclose(res, [float(sz), float(sy), float(sx)]):
            fail("resolution %r" % res)
        u = d.attrs["unit"]
        u = u.decode() if isinstance(u, bytes) else str(u)
        if u != unit:
            fail("unit %r" % u)
        um = list(d.attrs["element_size_um"])
        factor = {"nm": 1e-3, "um": 1.0}[unit]
        if not np.allclose(um, [float(sz) * factor, float(sy) * factor, float(sx) * factor]):
            fail("element_size_um %r" % um)
    print("ok")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"write": write, "check-ome": check_ome, "check-probs": check_probs, "check-h5": check_h5,
     "check-uncertainty": check_uncertainty}[cmd](*args)
