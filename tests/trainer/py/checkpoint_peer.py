"""Python PyTorch as a user of our checkpoints.

  checkpoint_peer.py CKPT_DIR NAME SIZE CLASSES RECON

- model.pt: torch.load(weights_only=True) (the default since PyTorch 2.6),
  strict load_state_dict into the reference TransUNet, a finite forward pass.
- optimizer.pt: every pickle opcode and global is one PyTorch 2.6's
  weights_only unpickler accepts (checked with pickletools, so this holds on
  the 1.13 here too, whose weights_only unpickler lacks BINFLOAT); loaded,
  it is accepted by torch.optim.SGD.load_state_dict for the same model, its
  momentum buffers have the parameters' shapes, and training continues
  (one SGD step, finite).
- no other file of the checkpoint is a pickle (state.json is JSON).
Exit 0 on success; the reason on stderr otherwise.
"""
import json
import os
import pickletools
import sys
import zipfile

import torch

# The project's Python TransUNet (also the architecture of our BioImage.IO packages).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "trainer", "model", "python"))
from transunet import VisionTransformer  # noqa: E402

# What torch._weights_only_unpickler accepts (PyTorch 2.6), restricted to
# what a state dict needs.
ALLOWED_OPCODES = {
    "PROTO", "STOP", "GLOBAL", "REDUCE", "BUILD", "MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "NONE",
    "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE",
    "BINPERSID", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET",
}
ALLOWED_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2"} | {
    f"torch {t}Storage" for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
}


def scan(path):
    with zipfile.ZipFile(path) as z:
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise SystemExit(f"{path}: expected one data.pkl, found {pickles}")
        for op, arg, _ in pickletools.genops(z.read(pickles[0])):
            if op.name not in ALLOWED_OPCODES:
                raise SystemExit(f"{path}: opcode {op.name} is not accepted by weights_only=True")
            if op.name == "GLOBAL" and arg not in ALLOWED_GLOBALS:
                raise SystemExit(f"{path}: global {arg!r} is not accepted by weights_only=True")


def main():
    ckpt, name, size, classes, recon = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    for f in sorted(os.listdir(ckpt)):
        if f.endswith(".pt"):
            scan(os.path.join(ckpt, f))
        elif f == "state.json":
            json.load(open(os.path.join(ckpt, f)))
    weights = torch.load(os.path.join(ckpt, "model.pt"), weights_only=True)
    if type(weights) is not dict or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise SystemExit("model.pt: not a dict of tensors")
    model = VisionTransformer(name, size, classes, recon)
    model.load_state_dict(weights, strict=True)
    x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.isfinite(model.eval()(x)).all():
            raise SystemExit("model.pt: forward pass is not finite")

    path = os.path.join(ckpt, "optimizer.pt")
    try:
        state = torch.load(path, weights_only=True)
        how = "weights_only=True"
    except Exception as e:  # 1.13: "Unsupported operand 71" (BINFLOAT); the scan above covered 2.6's rules
        if int(torch.__version__.split(".")[0]) >= 2 or "71" not in str(e):
            raise
        state = torch.load(path, weights_only=False)
        how = "weights_only=False (PyTorch 1.13 has no BINFLOAT in weights_only)"
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt.load_state_dict(state)
    params = list(model.parameters())
    buffers = 0
    for p in params:
        s = opt.state.get(p, {})
        if "momentum_buffer" in s:
            buffers += 1
            if s["momentum_buffer"].shape != p.shape:
                raise SystemExit("optimizer.pt: a momentum buffer's shape differs from its parameter's")
    if buffers == 0:
        raise SystemExit("optimizer.pt: no momentum buffers")
    model.train()
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    if not all(torch.isfinite(p).all() for p in params):
        raise SystemExit("a Python SGD step on the restored state gave non-finite parameters")
    print(f"python {torch.__version__}: model.pt {len(weights)} tensors (weights_only, strict); "
          f"optimizer.pt via {how}: lr {opt.param_groups[0]['lr']:.3g}, {buffers}/{len(params)} momentum buffers; one step OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
