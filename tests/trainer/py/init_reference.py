"""Initialisation parity (tests/trainer/training_parity_test.cc).

  init_reference.py MODEL_PT NAME SIZE CLASSES RECON

MODEL_PT holds fresh random-init weights written by our C++. The reference
model (trainer/model/python/transunet.py, METHOD.md section 1) is built here with
PyTorch's own initialisation, and for every tensor of its state dict:

- a tensor the reference initialises to a constant (norm weights 1, biases 0,
  position embeddings 0, BatchNorm running statistics, counters) must be
  exactly that constant in ours;
- a uniform tensor, U(-b, b) with b from the reference's scheme
  (kaiming-uniform a=sqrt(5): b = 1/sqrt(fan_in) for Conv2d/Linear weights
  and their biases; xavier-uniform b = sqrt(6/(fan_in + fan_out)) for the
  MLP's fc1/fc2 weights), must lie within [-b, b] and reach past
  b (1 - 20/n) (a U(-b, b) sample of n falls short of that with probability
  below e^-20);
- a normal tensor (the MLP biases, N(0, 1e-6)) must lie within 8 sigma;
- for both, mean and standard deviation must equal those of the reference's
  own fresh tensor within 6 standard errors of their difference:
  |mean_a - mean_b| <= 6 sigma sqrt(2/n), |std_a / std_b - 1| <= 6 sqrt(1/n)
  (the standard error of a sample std is at most sigma/sqrt(2n), for the
  normal; the uniform's is smaller).
The reference's own tensors are checked against the same bounds (so the
scheme stated here is the reference's). Prints one JSON line: counts per kind
and every failure; exit status 0 when there is none, 3 otherwise.
"""
import os
import json
import math
import sys

import torch
from torch import nn

# The project's Python TransUNet (also the architecture of our BioImage.IO packages).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "trainer", "model", "python"))
from transunet import Mlp, VisionTransformer  # noqa: E402


def scheme(model):
    """name -> ("uniform", b) | ("normal", sigma) for every random tensor of the reference."""
    out = {}
    mlp_fcs = {id(m.fc1) for m in model.modules() if isinstance(m, Mlp)} | {
        id(m.fc2) for m in model.modules() if isinstance(m, Mlp)}
    for prefix, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        if id(m) in mlp_fcs:
            out[prefix + ".weight"] = ("uniform", math.sqrt(6.0 / (fan_in + fan_out)))
            out[prefix + ".bias"] = ("normal", 1e-6)
        else:
            out[prefix + ".weight"] = ("uniform", 1.0 / math.sqrt(fan_in))
            if m.bias is not None:
                out[prefix + ".bias"] = ("uniform", 1.0 / math.sqrt(fan_in))
    return out


def check(name, t, kind, scale):
    """The reasons `t` does not follow (kind, scale)."""
    t = t.double()
    n = t.numel()
    top = t.abs().max().item()
    if kind == "uniform":
        if top > scale * (1 + 1e-6):
            return [f"{name}: |x| up to {top:.4g}, beyond the bound {scale:.4g}"]
        if top < scale * (1 - 20.0 / n):
            return [f"{name}: |x| only up to {top:.4g}, a U(-{scale:.4g}, {scale:.4g}) sample of {n} reaches further"]
    elif top > 8 * scale:
        return [f"{name}: |x| up to {top:.4g}, beyond 8 sigma = {8 * scale:.4g}"]
    return []


def main():
    path, name, size, classes, recon = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    ours = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    ref = VisionTransformer(name, size, classes, reconstruction=recon)
    random = scheme(ref)
    failures, counts = [], {"constant": 0, "uniform": 0, "normal": 0}
    state = ref.state_dict()
    missing = sorted(set(state) ^ set(ours))
    if missing:
        failures.append(f"names differ: {missing[:5]}")
    for key, mine in state.items():
        if key not in ours:
            continue
        theirs = ours[key]
        if theirs.shape != mine.shape:
            failures.append(f"{key}: shape {tuple(theirs.shape)}, the reference's {tuple(mine.shape)}")
            continue
        if key not in random:
            counts["constant"] += 1
            flat = mine.flatten()
            if not bool((flat == flat[0]).all()):
                failures.append(f"{key}: the reference's is not constant and has no stated scheme")
            elif not torch.equal(theirs.to(mine.dtype), mine):
                failures.append(f"{key}: not the reference's constant {flat[0].item()}")
            continue
        kind, scale = random[key]
        counts[kind] += 1
        failures += ["reference " + f for f in check(key, mine, kind, scale)]
        failures += check(key, theirs, kind, scale)
        a, b, n = theirs.double(), mine.double(), mine.numel()
        if n < 2:
            continue
        sigma = b.std().item()
        if abs(a.mean().item() - b.mean().item()) > 6 * sigma * math.sqrt(2.0 / n):
            failures.append(f"{key}: mean {a.mean().item():.4g}, the reference's {b.mean().item():.4g}")
        if abs(a.std().item() / sigma - 1) > 6 * math.sqrt(1.0 / n):
            failures.append(f"{key}: std {a.std().item():.4g}, the reference's {sigma:.4g} (n = {n})")
    print(json.dumps({"tensors": len(state), **counts, "failures": failures}))
    return 3 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
