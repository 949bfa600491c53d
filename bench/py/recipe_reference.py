"""A Python fine-tuning loop written from ../shared/docs/METHOD.md section 3,
for bench/recipe_bench.sh's like-for-like check (issue 20, item 4).

  recipe_reference.py DATASET OUT_MODEL_PT --recipe paper|plain --iters K
      --batch B --seed S [--model tiny --size 64 --classes 1] [--threads N]

The reference TransUNet (trainer/model/python/transunet.py) from random
initialisation, SGD 0.003 / momentum 0.9 / weight decay 1e-4, poly 0.9 over
exactly K iterations, 0.5 BCE + 0.5 Dice (1 class) or 0.5 CE + 0.5 soft Dice,
batches drawn uniformly from the imported training tiles (h5py), normalised
with the dataset's mean/std (its manifest). Augmentation per sample, in the
reference's order (albumentations semantics), image and mask together (mask
nearest):
  paper  random resized crop (area U(0.08, 1), aspect exp U(ln 0.5, ln 1.5),
         10 tries then the centre crop), rotate U(-180, 180) p 0.5 (bilinear,
         reflect-101), brightness/contrast p 0.5 (alpha = 1 + U(-0.2, 0.2),
         beta = U(-0.2, 0.2) x 255, clipped; image only), flips p 0.5 each;
  plain  a plain crop at a uniform position, k x 90 degrees (k ~ U{0..3}),
         flips p 0.5 each.
Writes the final weights with torch.save (a plain state dict), which our
evaluate job reads like any PyTorch checkpoint.
"""
import argparse
import json
import math
import os
import random
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "trainer", "py"))
from reference_training import poly_lr, segmentation_loss, sgd  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "trainer", "model", "python"))
from transunet import VisionTransformer  # noqa: E402


def resized_crop_box(h, w, rng):
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(1.5)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    ratio = w / h
    if ratio < 0.5:
        cw, ch = w, int(round(w / 0.5))
    elif ratio > 1.5:
        ch, cw = h, int(round(h * 1.5))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def rotate(img, mask, degrees):
    """Rotation about the centre, same size, reflect-101 border."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]).unsqueeze(0)
    grid = F.affine_grid(theta, (1, 1) + tuple(img.shape), align_corners=True)
    img = F.grid_sample(img[None, None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0, 0]
    mask = F.grid_sample(mask[None, None].float(), grid, mode="nearest", padding_mode="reflection",
                         align_corners=True)[0, 0].round().long()
    return img, mask


def augment(img, mask, size, recipe, rng):
    """img float grey levels [H, W], mask long [H, W] -> both [size, size]."""
    h, w = img.shape
    if recipe == "paper":
        y, x, ch, cw = resized_crop_box(h, w, rng)
        img = F.interpolate(img[y:y + ch, x:x + cw][None, None], size=(size, size), mode="bilinear",
                            align_corners=False)[0, 0]
        mask = F.interpolate(mask[y:y + ch, x:x + cw][None, None].float(), size=(size, size),
                             mode="nearest")[0, 0].long()
        if rng.random() < 0.5:
            img, mask = rotate(img, mask, rng.uniform(-180, 180))
        if rng.random() < 0.5:
            alpha, beta = 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2) * 255
            img = (alpha * img + beta).clamp(0, 255)
    else:
        y, x = rng.randint(0, h - size), rng.randint(0, w - size)
        img, mask = img[y:y + size, x:x + size], mask[y:y + size, x:x + size]
        k = rng.randint(0, 3)
        img, mask = torch.rot90(img, k), torch.rot90(mask, k)
    if rng.random() < 0.5:
        img, mask = img.flip(1), mask.flip(1)
    if rng.random() < 0.5:
        img, mask = img.flip(0), mask.flip(0)
    return img, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("out")
    ap.add_argument("--recipe", required=True, choices=["paper", "plain"])
    ap.add_argument("--iters", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    manifest = json.load(open(os.path.join(a.dataset, "manifest.json")))
    images, masks = [], []
    for shard in manifest["shards"]:
        with h5py.File(os.path.join(a.dataset, shard["file"]), "r") as h:
            images.append(h["images"][:])
            masks.append(h["masks"][:])
    images = torch.from_numpy(np.concatenate(images)).float()
    masks = torch.from_numpy(np.concatenate(masks)).long()
    mean, std = manifest["mean"], manifest["std"]

    model = VisionTransformer(a.model, a.size, a.classes).train()
    opt = sgd(model.parameters())
    for k in range(a.iters):
        for g in opt.param_groups:
            g["lr"] = poly_lr(k, a.iters)
        pairs = [augment(images[i], masks[i], a.size, a.recipe, rng)
                 for i in (rng.randrange(len(images)) for _ in range(a.batch))]
        x = ((torch.stack([p[0] for p in pairs]) / 255 - mean) / std).unsqueeze(1)
        t = torch.stack([p[1] for p in pairs])
        opt.zero_grad(set_to_none=True)
        loss = segmentation_loss(model(x), t)
        loss.backward()
        opt.step()
        if (k + 1) % 50 == 0 or k + 1 == a.iters:
            print(f"step {k + 1}/{a.iters} loss {loss.item():.4f}", flush=True)
    torch.save(model.state_dict(), a.out)


if __name__ == "__main__":
    main()
