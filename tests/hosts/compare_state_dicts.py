"""The largest relative difference between two state dicts (PyTorch reads
both): per tensor, max |a - b| over max(max |a|, 1e-3), as
tests/trainer/dist_test.cc compares them.

    compare_state_dicts.py A.pt B.pt    # prints the difference
"""
import sys

import torch

a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
if a.keys() != b.keys():
    sys.exit(f"{sys.argv[1]} and {sys.argv[2]} hold different tensors")
worst = 0.0
for k in a:
    x, y = a[k].double(), b[k].double()
    if x.numel():
        worst = max(worst, ((x - y).abs().max() / max(x.abs().max().item(), 1e-3)).item())
print(f"{worst:.3g}")
