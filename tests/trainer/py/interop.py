"""The Python side of the C++ <-> PyTorch interop and parity tests.

  interop.py make  NAME SIZE CLASSES RECON SEED OUTDIR
      Builds the reference model (trainer/model/python/transunet.py) with random,
      non-trivial weights (BN statistics too), and writes, with plain
      torch.save:  state.pt (model.state_dict(), an OrderedDict with
      _metadata), state_ddp.pt (the same under a DDP-style 'module.' prefix),
      io.pt ({'input', 'output'}: an eval-mode forward pass), keys.txt.
  interop.py check NAME SIZE CLASSES RECON CPP_FILE REF_FILE
      Loads the C++-written CPP_FILE with torch.load(weights_only=True) (the
      default since PyTorch 2.6), checks it is a dict of tensors, loads it
      strictly into the reference model, checks every tensor equals
      REF_FILE's (the state dict the C++ side loaded) and that the model's
      forward pass on io.pt's input (beside REF_FILE) gives io.pt's output.
Exit status 0 on success; a message on stderr otherwise.
"""
import os
import sys

import torch

# The project's Python TransUNet (also the architecture of our BioImage.IO packages).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "trainer", "model", "python"))
from transunet import VisionTransformer  # noqa: E402


def build(name, size, classes, recon, seed):
    torch.manual_seed(seed)
    model = VisionTransformer(name, size, classes, recon)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "position_embeddings" in n or n.endswith(".bias"):
                p.normal_(0, 0.02)  # zero/tiny at init: make them matter
            elif "gn" in n.split(".")[-2] or "norm" in n or n.endswith(".1.weight"):
                p.uniform_(0.5, 1.5)
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif n.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif n.endswith("num_batches_tracked"):
                b.fill_(17)
    return model.eval()


class Wrapper(torch.nn.Module):  # what DDP's state_dict looks like
    def __init__(self, module):
        super().__init__()
        self.module = module


def main():
    cmd = sys.argv[1]
    name, size, classes, recon = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    if cmd == "make":
        seed, out = int(sys.argv[6]), sys.argv[7]
        model = build(name, size, classes, recon, seed)
        sd = model.state_dict()
        assert type(sd).__name__ == "OrderedDict" and hasattr(sd, "_metadata")
        torch.save(sd, f"{out}/state.pt")
        torch.save(Wrapper(model).state_dict(), f"{out}/state_ddp.pt")
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(2, 1, size, size, generator=g)
        with torch.no_grad():
            y = model(x)
        torch.save({"input": x, "output": y}, f"{out}/io.pt")
        with open(f"{out}/keys.txt", "w") as f:
            for k, v in sd.items():
                f.write(f"{k}\t{list(v.shape)}\n")
        return 0
    if cmd == "check":
        cpp_file, ref_file = sys.argv[6], sys.argv[7]
        loaded = torch.load(cpp_file, weights_only=True)
        if type(loaded) is not dict or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            print(f"{cpp_file}: not a dict of tensors: {type(loaded)}", file=sys.stderr)
            return 1
        model = VisionTransformer(name, size, classes, recon)
        model.load_state_dict(loaded, strict=True)
        ref = torch.load(ref_file)
        if list(loaded.keys()) != list(ref.keys()):
            print("key order differs from the reference state_dict", file=sys.stderr)
            return 1
        for k, v in ref.items():
            if v.dtype != loaded[k].dtype or not torch.equal(v, loaded[k]):
                print(f"{k}: tensors differ", file=sys.stderr)
                return 1
        io = torch.load(os.path.join(os.path.dirname(ref_file), "io.pt"))
        with torch.no_grad():
            y = model.eval()(io["input"])
        diff = (y - io["output"]).abs().max().item()
        scale = io["output"].abs().max().item()
        # Same weights, same Python code, same process kind: only the thread
        # schedule may differ, far below 1e-6 of the output scale.
        if not diff <= 1e-6 * max(scale, 1.0):
            print(f"forward on the C++-written weights differs by {diff:.3g} (scale {scale:.3g})", file=sys.stderr)
            return 1
        print(f"python: {len(loaded)} tensors identical, weights_only + strict load_state_dict OK, forward max diff {diff:.3g}")
        return 0
    print(f"unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
