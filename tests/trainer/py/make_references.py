"""Writes files that reference other files, for the read-confinement tests
(common/read_scope.h): a store with inputs whose format points outside it,
an outside directory with the data they point to, and inside variants that
must still read. Every outside array holds 7s, every inside one 3s.

  make_references.py ROOT     (writes ROOT/store/in/... and ROOT/outside/...)

Mechanisms: NRRD `data file:` (absolute, ../, LIST, pattern), HDF5 external link
(absolute, relative), external storage (absolute, relative), virtual dataset
(absolute, relative, and "." whose source has external storage), a Zarr chunk
that is a symlink, an OME-Zarr multiscale path with ../, a shard manifest
shard that is a symlink, weights that are a symlink, a TIFF that is a
symlink. (NIfTI: niftilib reads a .nii/.nii.gz as one file, so the .img of
a two-file header is never opened through ReadArray; its reader still
checks the image file it names.) Writes
ROOT/cases.json: {name: {"spec": ..., "inside": bool}}.
"""
import json
import os
import shutil
import sys

import h5py
import nibabel as nib
import numpy as np
import tifffile
import zarr

root = os.path.abspath(sys.argv[1])
store, outside = f"{root}/store", f"{root}/outside"
inp = f"{store}/in"
os.makedirs(inp, exist_ok=True)
os.makedirs(outside, exist_ok=True)
secret = np.full((16, 16), 7, np.uint8)
mine = np.full((16, 16), 3, np.uint8)
cases = {}

secret.tofile(f"{outside}/secret.raw")
mine.tofile(f"{inp}/mine.raw")
with h5py.File(f"{outside}/secret.h5", "w") as f:
    f["raw"] = secret
with h5py.File(f"{inp}/mine.h5", "w") as f:
    f["raw"] = mine


def nhdr(name, data_file_line, inside=False):
    with open(f"{inp}/{name}", "w") as f:
        f.write("NRRD0004\ntype: uint8\ndimension: 2\nsizes: 16 16\nencoding: raw\n" + data_file_line + "\n")
    cases[name] = {"spec": f"{inp}/{name}", "inside": inside}


nhdr("nrrd_abs.nhdr", f"data file: {outside}/secret.raw\n")
nhdr("nrrd_rel.nhdr", "data file: ../../outside/secret.raw\n")
nhdr("nrrd_list.nhdr", "data file: LIST 2\n../../outside/secret.raw")
nhdr("nrrd_inside.nhdr", "data file: mine.raw\n", inside=True)
secret.tofile(f"{outside}/secret1.raw")
nhdr("nrrd_pattern.nhdr", "data file: ../../outside/secret%d.raw 1 1 1 2\n")

with h5py.File(f"{inp}/elink_abs.h5", "w") as f:
    f["raw"] = h5py.ExternalLink(f"{outside}/secret.h5", "/raw")
with h5py.File(f"{inp}/elink_rel.h5", "w") as f:
    f["raw"] = h5py.ExternalLink("../../outside/secret.h5", "/raw")
with h5py.File(f"{inp}/elink_inside.h5", "w") as f:
    f["raw"] = h5py.ExternalLink("mine.h5", "/raw")
for name, inside in [("elink_abs.h5", False), ("elink_rel.h5", False), ("elink_inside.h5", True)]:
    cases[name] = {"spec": f"{inp}/{name}:/raw", "inside": inside}

for name, target, inside in [("external_abs.h5", f"{outside}/secret.raw", False),
                             ("external_rel.h5", "../../outside/secret.raw", False),
                             ("external_inside.h5", "mine.raw", True)]:
    with h5py.File(f"{inp}/{name}", "w") as f:
        f.create_dataset("raw", (16, 16), np.uint8, external=[(target.encode(), 0, 256)])
    cases[name] = {"spec": f"{inp}/{name}:/raw", "inside": inside}

for name, source, inside in [("vds_abs.h5", f"{outside}/secret.h5", False),
                             ("vds_rel.h5", "../../outside/secret.h5", False),
                             ("vds_inside.h5", "mine.h5", True)]:
    layout = h5py.VirtualLayout(shape=(16, 16), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(source, "raw", shape=(16, 16))
    with h5py.File(f"{inp}/{name}", "w") as f:
        f.create_virtual_dataset("raw", layout, fillvalue=0)
    cases[name] = {"spec": f"{inp}/{name}:/raw", "inside": inside}

# A virtual dataset whose source is a dataset of the same file (".") that
# keeps its data in an external raw file outside the store.
with h5py.File(f"{inp}/vds_dot_external.h5", "w") as f:
    f.create_dataset("ext", (16, 16), np.uint8, external=[(f"{outside}/secret.raw".encode(), 0, 256)])
    layout = h5py.VirtualLayout(shape=(16, 16), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(".", "ext", shape=(16, 16))
    f.create_virtual_dataset("raw", layout, fillvalue=0)
cases["vds_dot_external.h5"] = {"spec": f"{inp}/vds_dot_external.h5:/raw", "inside": False}

for where, data in [(outside, secret), (inp, mine)]:
    zarr.save_array(f"{where}/plain.zarr", data, chunks=(16, 16), compressor=None)
zarr.save_array(f"{inp}/chunk_link.zarr", mine, chunks=(16, 16), compressor=None)
os.remove(f"{inp}/chunk_link.zarr/0.0")
os.symlink(f"{outside}/plain.zarr/0.0", f"{inp}/chunk_link.zarr/0.0")
cases["chunk_link.zarr"] = {"spec": f"{inp}/chunk_link.zarr", "inside": False}
cases["plain.zarr"] = {"spec": f"{inp}/plain.zarr", "inside": True}


def ome(name, path):
    os.makedirs(f"{inp}/{name}", exist_ok=True)
    with open(f"{inp}/{name}/.zgroup", "w") as f:
        json.dump({"zarr_format": 2}, f)
    with open(f"{inp}/{name}/.zattrs", "w") as f:
        json.dump({"multiscales": [{"version": "0.4", "axes": [{"name": "y", "type": "space"},
                                                                  {"name": "x", "type": "space"}],
                                    "datasets": [{"path": path, "coordinateTransformations": [
                                        {"type": "scale", "scale": [1.0, 1.0]}]}]}]}, f)
    cases[name] = {"spec": f"{inp}/{name}", "inside": not path.startswith("..")}


ome("ome_escape.zarr", "../../../outside/plain.zarr")
zarr.save_array(f"{inp}/ome_inside.zarr/0", mine, chunks=(16, 16), compressor=None)
ome("ome_inside.zarr", "0")

os.makedirs(f"{store}/datasets/escape", exist_ok=True)
os.symlink(f"{outside}/secret.h5", f"{store}/datasets/escape/shard-00000.h5")
with open(f"{outside}/w.pt", "wb") as f:
    f.write(b"PK\x03\x04 not really weights")
os.symlink(f"{outside}/w.pt", f"{store}/w.pt")

tifffile.imwrite(f"{outside}/secret.tif", secret)
os.symlink(f"{outside}/secret.tif", f"{inp}/link.tif")
cases["link.tif"] = {"spec": f"{inp}/link.tif", "inside": False}

with open(f"{root}/cases.json", "w") as f:
    json.dump(cases, f, indent=1)
