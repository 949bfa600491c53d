"""A consumer's check of a BioImage.IO model package (format 0.5), in Python
with torch, PyYAML and numpy only: what bioimageio.spec validates and what
bioimageio.core's model test runs, for the parts our packages use.

    validate_package.py PACKAGE.zip

1. the description: required fields and their types (format_version 0.5.x,
   type, name's characters and length, description, authors, cite with a
   DOI or URL, license, documentation, covers, timestamp, tags), every input
   and output (unique ids; axes: one batch, one channel with its names,
   space axes y/x with valid sizes; an output size referencing an input
   axis), data types, known pre/postprocessing with their kwargs, the
   weights entry (pytorch_state_dict with its architecture: source,
   callable, kwargs; pytorch_version), attachments;
2. every file it lists exists in the zip and matches its sha256; each test
   tensor's shape and dtype agree with its axes and data type;
3. the model test: builds the architecture from the package's own source
   with its kwargs, loads the weights with torch.load(weights_only=True)
   strictly, runs the test input through the preprocessing, the model and
   the postprocessing, and compares with the test output within the
   package's reproducibility_tolerance.

Prints "ok: ..." and the measured difference; exits 1 naming every problem.
"""
import datetime
import hashlib
import importlib.util
import io
import math
import re
import sys
import tempfile
import zipfile

import numpy as np
import torch
import yaml

NAME_CHARS = re.compile(r"^[A-Za-z0-9_+\- ()]+$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DTYPES = {"float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "bool"}
PRE = {"binarize", "clip", "ensure_dtype", "scale_linear", "sigmoid", "softmax", "fixed_zero_mean_unit_variance",
       "zero_mean_unit_variance", "scale_range"}
POST = PRE | {"scale_mean_variance"}


class Checker:
    def __init__(self, zf):
        self.zf = zf
        self.names = set(zf.namelist())
        self.errors = []

    def error(self, where, what):
        self.errors.append(f"{where}: {what}")

    def need(self, node, key, kind, where):
        if not isinstance(node, dict) or key not in node:
            self.error(where, f"'{key}' is required")
            return None
        value = node[key]
        if not isinstance(value, kind):
            self.error(f"{where}.{key}", f"expected {kind if isinstance(kind, type) else kind[0]}, got {type(value).__name__}")
            return None
        return value

    def file(self, descr, where, with_sha=True):
        """A listed file: in the package, and matching its sha256."""
        if isinstance(descr, str):
            descr = {"source": descr}
        source = self.need(descr, "source", str, where)
        if source is None:
            return None
        if source not in self.names:
            self.error(where, f"'{source}' is not in the package")
            return None
        data = self.zf.read(source)
        if with_sha:
            sha = self.need(descr, "sha256", str, where)
            if sha is not None and hashlib.sha256(data).hexdigest() != sha:
                self.error(where, f"sha256 of '{source}' is {hashlib.sha256(data).hexdigest()}, rdf.yaml says {sha}")
        return data


def check_processing(c, steps, allowed, where):
    for i, step in enumerate(steps or []):
        w = f"{where}[{i}]"
        op = c.need(step, "id", str, w)
        if op is None:
            continue
        if op not in allowed:
            c.error(w, f"unknown id '{op}'")
        kw = step.get("kwargs", {})
        if op == "ensure_dtype" and kw.get("dtype") not in DTYPES:
            c.error(w, "ensure_dtype needs kwargs.dtype")
        if op == "scale_linear" and not isinstance(kw.get("gain", 1.0), (int, float)):
            c.error(w, "scale_linear: gain must be a number")
        if op == "fixed_zero_mean_unit_variance":
            if not isinstance(kw.get("mean"), (int, float)) or not isinstance(kw.get("std"), (int, float)):
                c.error(w, "fixed_zero_mean_unit_variance needs numeric kwargs mean and std")
            elif kw["std"] < 1e-6:
                c.error(w, "fixed_zero_mean_unit_variance: std must be >= 1e-6")


def check_tensor(c, t, where, inputs_axes, is_input):
    tid = c.need(t, "id", str, where)
    axes = c.need(t, "axes", list, where) or []
    kinds = [a.get("type") if isinstance(a, dict) else None for a in axes]
    if kinds.count("batch") != 1 or kinds[0] != "batch":
        c.error(f"{where}.axes", "one batch axis, first")
    if kinds.count("channel") != 1:
        c.error(f"{where}.axes", "one channel axis")
    space = [a for a in axes if isinstance(a, dict) and a.get("type") == "space"]
    ids = [a.get("id", "x") for a in space]
    if sorted(ids) != ["x", "y"]:
        c.error(f"{where}.axes", f"space axes y and x expected, got {ids}")
    shape = []
    for j, a in enumerate(axes):
        w = f"{where}.axes[{j}]"
        if not isinstance(a, dict):
            c.error(w, "an axis is a mapping")
            continue
        if a.get("type") == "batch":
            shape.append(None)
        elif a.get("type") == "channel":
            names = c.need(a, "channel_names", list, w) or []
            shape.append(len(names))
        elif a.get("type") == "space":
            size = a.get("size")
            if isinstance(size, int) and size > 0:
                shape.append(size)
            elif isinstance(size, dict) and "min" in size:
                if not (size.get("min", 0) > 0 and size.get("step", 0) > 0):
                    c.error(w, "a parameterized size needs min > 0 and step > 0")
                shape.append(None)
            elif isinstance(size, dict) and not is_input:
                ref = inputs_axes.get((size.get("tensor_id"), size.get("axis_id")))
                if ref is None:
                    c.error(w, f"size references {size.get('tensor_id')}.{size.get('axis_id')}, no such input axis")
                shape.append(ref)
            else:
                c.error(w, f"size {size!r} is not valid")
                shape.append(None)
            if is_input:
                inputs_axes[(tid, a.get("id", "x"))] = shape[-1]
        else:
            c.error(w, f"unknown axis type {a.get('type')!r}")
    data = t.get("data", {"type": "float32"})
    dtype = data.get("type", "float32") if isinstance(data, dict) else None
    if dtype not in DTYPES:
        c.error(f"{where}.data", f"unknown type {dtype!r}")
    raw = c.file(t.get("test_tensor"), f"{where}.test_tensor")
    array = None
    if raw is not None:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        if array.ndim != len(axes):
            c.error(f"{where}.test_tensor", f"{array.ndim} dimensions for {len(axes)} axes")
        else:
            for k, (want, got) in enumerate(zip(shape, array.shape)):
                if want is not None and want != got:
                    c.error(f"{where}.test_tensor", f"axis {k} has size {got}, the description says {want}")
        if dtype in DTYPES and array.dtype != np.dtype(dtype):
            c.error(f"{where}.test_tensor", f"dtype {array.dtype}, data.type says {dtype}")
    check_processing(c, t.get("preprocessing" if is_input else "postprocessing"), PRE if is_input else POST,
                     f"{where}.{'preprocessing' if is_input else 'postprocessing'}")
    return array


def apply(steps, x):
    for step in steps or []:
        op, kw = step["id"], step.get("kwargs", {})
        if op == "ensure_dtype":
            x = x.to(getattr(torch, kw["dtype"]))
        elif op == "scale_linear":
            x = x * kw.get("gain", 1.0) + kw.get("offset", 0.0)
        elif op == "fixed_zero_mean_unit_variance":
            x = (x - kw["mean"]) / kw["std"]
        elif op == "sigmoid":
            x = torch.sigmoid(x)
        elif op == "softmax":
            x = torch.softmax(x, dim=1)
        else:
            raise SystemExit(f"FAIL: the model test does not implement {op}")
    return x


def main():
    path = sys.argv[1]
    with zipfile.ZipFile(path) as zf:
        c = Checker(zf)
        rdf_name = "rdf.yaml" if "rdf.yaml" in c.names else "bioimageio.yaml"
        rdf = yaml.safe_load(zf.read(rdf_name))
        version = c.need(rdf, "format_version", str, rdf_name)
        if version and not re.match(r"^0\.5\.\d+$", version):
            c.error("format_version", f"'{version}' is not 0.5.x")
        if rdf.get("type") != "model":
            c.error("type", "must be 'model'")
        name = c.need(rdf, "name", str, rdf_name)
        if name is not None and (not 5 <= len(name) <= 128 or not NAME_CHARS.match(name)):
            c.error("name", f"'{name}': 5-128 of letters, digits, _+- ()")
        description = c.need(rdf, "description", str, rdf_name)
        if description is not None and len(description) > 1024:
            c.error("description", "longer than 1024")
        for i, a in enumerate(c.need(rdf, "authors", list, rdf_name) or []):
            if not isinstance(a, dict) or not isinstance(a.get("name"), str) or "/" in a["name"]:
                c.error(f"authors[{i}]", "needs a name without '/'")
        cites = c.need(rdf, "cite", list, rdf_name) or []
        if not cites:
            c.error("cite", "at least one entry")
        for i, e in enumerate(cites):
            if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not (e.get("doi") or e.get("url")):
                c.error(f"cite[{i}]", "needs text and a doi or url")
        lic = c.need(rdf, "license", str, rdf_name)
        if lic is not None and not re.match(r"^[A-Za-z0-9.+\-]+$", lic):
            c.error("license", f"'{lic}' is not an SPDX identifier")
        doc = c.need(rdf, "documentation", str, rdf_name)
        if doc is not None and c.file(doc, "documentation", with_sha=False) is not None and not doc.endswith(".md"):
            c.error("documentation", "must be a .md file")
        for i, cover in enumerate(rdf.get("covers", [])):
            if c.file(cover, f"covers[{i}]", with_sha=False) is not None and not re.search(r"\.(png|jpe?g|gif)$", cover):
                c.error(f"covers[{i}]", "png, jpg or gif")
        ts = c.need(rdf, "timestamp", (str, datetime.datetime), rdf_name)  # YAML loaders give datetime
        if isinstance(ts, str):
            try:
                datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
            except ValueError:
                c.error("timestamp", f"'{ts}' is not ISO 8601")
        if not all(isinstance(t, str) for t in rdf.get("tags", [])):
            c.error("tags", "strings")
        for i, a in enumerate(rdf.get("attachments", [])):
            c.file(a, f"attachments[{i}]")
        if not isinstance(rdf.get("config", {}), dict):
            c.error("config", "a mapping")

        inputs_axes = {}
        ins = c.need(rdf, "inputs", list, rdf_name) or []
        outs = c.need(rdf, "outputs", list, rdf_name) or []
        if not ins or not outs:
            c.error(rdf_name, "inputs and outputs must not be empty")
        x = [check_tensor(c, t, f"inputs[{i}]", inputs_axes, True) for i, t in enumerate(ins)]
        y = [check_tensor(c, t, f"outputs[{i}]", inputs_axes, False) for i, t in enumerate(outs)]
        ids = [t.get("id") for t in ins + outs]
        if len(set(ids)) != len(ids):
            c.error("inputs/outputs", f"ids must be unique: {ids}")

        w = (c.need(rdf, "weights", dict, rdf_name) or {}).get("pytorch_state_dict")
        if w is None:
            c.error("weights", "no pytorch_state_dict entry")
            weights = arch_src = None
        else:
            weights = c.file(w, "weights.pytorch_state_dict")
            arch = c.need(w, "architecture", dict, "weights.pytorch_state_dict") or {}
            arch_src = c.file(arch, "weights.pytorch_state_dict.architecture")
            callable_name = c.need(arch, "callable", str, "weights.pytorch_state_dict.architecture")
            if callable_name is not None and not IDENTIFIER.match(callable_name):
                c.error("weights.pytorch_state_dict.architecture.callable", "an identifier")
            kwargs = arch.get("kwargs", {})
            if not isinstance(kwargs, dict):
                c.error("weights.pytorch_state_dict.architecture.kwargs", "a mapping")
            c.need(w, "pytorch_version", (str, int, float), "weights.pytorch_state_dict")

        if c.errors:
            print("FAIL: the description:\n  " + "\n  ".join(c.errors))
            sys.exit(1)
        print(f"ok: {path}: {rdf_name} (format {version}) and every file it lists check")

        # The model test (bioimageio.core's test_model for these parts).
        with tempfile.TemporaryDirectory() as tmp:
            src = f"{tmp}/{arch['source']}"
            open(src, "wb").write(arch_src)
            spec = importlib.util.spec_from_file_location("package_architecture", src)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            model = getattr(module, arch["callable"])(**arch.get("kwargs", {}))
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
            model.eval()
        with torch.no_grad():
            inp = apply(ins[0].get("preprocessing"), torch.from_numpy(x[0].copy()))
            out = apply(outs[0].get("postprocessing"), model(inp)).numpy()
        tol = 0.0
        for t in rdf.get("config", {}).get("bioimageio", {}).get("reproducibility_tolerance", []):
            tol = max(tol, float(t.get("absolute_tolerance", 0.0)))
        tol = tol or 1.5e-4  # bioimageio.core's default
        if out.shape != y[0].shape:
            print(f"FAIL: the model's output has shape {out.shape}, the test output {y[0].shape}")
            sys.exit(1)
        diff = float(np.max(np.abs(out.astype(np.float64) - y[0].astype(np.float64))))
        print(f"MEASURED max |PyTorch - test output| = {diff:.3g} (tolerance {tol:g})")
        if not math.isfinite(diff) or diff > tol:
            print(f"FAIL: the model test: the package's model does not reproduce its test output ({diff:.3g} > {tol:g})")
            sys.exit(1)
        print("ok: the model test: architecture from the package's source, weights_only load, test tensors reproduced")


if __name__ == "__main__":
    main()
