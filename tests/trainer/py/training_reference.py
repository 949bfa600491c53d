"""An independent implementation of RETINA's training step, for the parity test
(tests/trainer/training_parity_test.cc).

  training_reference.py STORE JOB DATASET --loss mse|bce_dice|ce_dice --iters K
      [--classes C] [--class-weights w0,w1,...] [--freeze] [--mean M --std S]
      [--model tiny --size 64] [--mutate NAME]

Written from ../shared/docs/METHOD.md with PyTorch's own parts, not from our
C++: the reference TransUNet (trainer/model/python/transunet.py) in float64 with dropout
off, torch.optim.SGD (lr 0.003, momentum 0.9, weight decay 1e-4 on all
parameters), the poly schedule lr_k = 0.003 (1 - k/K)^0.9 set before step k,
torch.nn.functional losses:
  mse       MSE between model(x) and x (pre-training with augmentation off)
  bce_dice  0.5 BCE-with-logits + 0.5 (1 - (2 sum pt + 1e-5)/(sum p + sum t + 1e-5))
  ce_dice   0.5 weighted CE + 0.5 mean_c (1 - (2 sum pt + 1e-5)/(sum p^2 + sum t^2 + 1e-5))
and, with --freeze, every parameter whose name starts with transformer.encoder
frozen (METHOD.md section 3). The initial weights are the job's step-0
checkpoint (loaded strictly); every step sees the whole dataset (the job's
global batch is the dataset), images normalised as (v/255 - mean)/std.

It compares the loss of every step with the job's events.jsonl and every
parameter and buffer with its final checkpoint, and prints one JSON line:
  {"loss_rel": worst |a-b|/|b| over steps, "state_rel": worst per-tensor
   max|a-b| / max(max|b|, 1e-3), "worst_tensor": name, "steps": K}

--mutate makes this implementation wrong on purpose, to show that the test
bites: dice_smooth (1 instead of 1e-5), wd_group (no weight decay on the
decoder's parameter group), lr_late (the schedule one step late),
frozen_moves (one frozen tensor trained).
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

# The project's Python TransUNet (also the architecture of our BioImage.IO packages).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "trainer", "model", "python"))
from transunet import VisionTransformer  # noqa: E402
from reference_training import SMOOTH, poly_lr, segmentation_loss, sgd



def load_dataset(path):
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    images, masks = [], []
    for shard in manifest["shards"]:
        with h5py.File(os.path.join(path, shard["file"]), "r") as h:
            images.append(h["images"][:])
            if "masks" in h:
                masks.append(h["masks"][:])
    return np.concatenate(images), (np.concatenate(masks) if masks else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("job")
    ap.add_argument("dataset")
    ap.add_argument("--loss", required=True, choices=["mse", "bce_dice", "ce_dice"])
    ap.add_argument("--iters", type=int, required=True)
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--class-weights", default="")
    ap.add_argument("--freeze", action="store_true")
    ap.add_argument("--mean", type=float, required=True)
    ap.add_argument("--std", type=float, required=True)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--mutate", default="", choices=["", "dice_smooth", "wd_group", "lr_late", "frozen_moves"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    job = os.path.join(a.store, "jobs", a.job)
    smooth = 1.0 if a.mutate == "dice_smooth" else SMOOTH

    model = VisionTransformer(a.model, a.size, a.classes, reconstruction=a.loss == "mse").double().train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    start = torch.load(os.path.join(job, "checkpoints", "step-00000000", "model.pt"), weights_only=True)
    model.load_state_dict(start, strict=True)
    frozen = [n for n, _ in model.named_parameters() if a.freeze and n.startswith("transformer.encoder")]
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    if a.mutate == "frozen_moves":
        dict(model.named_parameters())[frozen[0]].requires_grad_(True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if a.mutate == "wd_group":
        groups = [{"params": [p for n, p in trainable if not n.startswith("decoder")]},
                  {"params": [p for n, p in trainable if n.startswith("decoder")], "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for _, p in trainable]}]
    opt = sgd(groups)

    images, masks = load_dataset(a.dataset)
    x = ((torch.from_numpy(images).double() / 255 - a.mean) / a.std).unsqueeze(1)
    weights = torch.tensor([float(w) for w in a.class_weights.split(",")], dtype=torch.float64) if a.class_weights else None

    losses = []
    for k in range(a.iters):
        kk = max(k - 1, 0) if a.mutate == "lr_late" else k
        for g in opt.param_groups:
            g["lr"] = poly_lr(kk, a.iters)
        opt.zero_grad(set_to_none=True)
        out = model(x)
        if a.loss == "mse":
            loss = F.mse_loss(out, x)
        else:
            loss = segmentation_loss(out, torch.from_numpy(masks).long(), weights, smooth)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    theirs = [e["loss"] for e in map(json.loads, open(os.path.join(job, "events.jsonl"))) if e.get("event") == "step"]
    if len(theirs) != a.iters:
        raise SystemExit(f"events.jsonl: {len(theirs)} step events, expected {a.iters}")
    loss_rel = max(abs(m - t) / abs(t) for m, t in zip(losses, theirs))
    final = torch.load(os.path.join(job, "checkpoints", f"step-{a.iters:08d}", "model.pt"), weights_only=True)
    mine = model.state_dict()
    if set(final) != set(mine):
        raise SystemExit(f"state dicts differ in names: {sorted(set(final) ^ set(mine))[:5]}")
    state_rel, worst = 0.0, ""
    for name, theirs_t in final.items():
        d = (mine[name].double() - theirs_t.double()).abs().max().item()
        rel = d / max(theirs_t.double().abs().max().item(), 1e-3)
        if rel > state_rel:
            state_rel, worst = rel, name
    print(json.dumps({"loss_rel": loss_rel, "state_rel": state_rel, "worst_tensor": worst, "steps": a.iters,
                      "losses": losses, "frozen": len(frozen)}))


if __name__ == "__main__":
    main()
