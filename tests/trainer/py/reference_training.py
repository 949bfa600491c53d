"""RETINA's fine-tuning objective and optimiser, written from
../shared/docs/METHOD.md sections 2-3 with PyTorch's own parts (for the
parity test's training_reference.py and bench/recipe_bench.sh's loop).
"""
import torch
import torch.nn.functional as F

LR, MOMENTUM, WEIGHT_DECAY, POWER, SMOOTH = 0.003, 0.9, 1e-4, 0.9, 1e-5


def poly_lr(k, iters, base=LR, power=POWER):
    """lr of iteration k of `iters`: base (1 - k/K)^power."""
    return base * (1 - k / iters) ** power


def bce_dice(logits, target, smooth=SMOOTH):
    """Binary: 0.5 BCE-with-logits + 0.5 (1 - (2 sum pt + s)/(sum p + sum t + s)); logits [B, H, W]."""
    t = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    dice = (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)
    return 0.5 * F.binary_cross_entropy_with_logits(logits, t) + 0.5 * (1 - dice)


def ce_dice(logits, target, weights=None, smooth=SMOOTH):
    """Multi-class: 0.5 weighted CE + 0.5 mean over classes (background included)
    of 1 - (2 sum pt + s)/(sum p^2 + sum t^2 + s), over the whole batch; the
    weights are not applied to Dice. logits [B, C, H, W], target [B, H, W]."""
    classes = logits.shape[1]
    p = torch.softmax(logits, 1)
    t = F.one_hot(target, classes).permute(0, 3, 1, 2).to(p.dtype)
    dims = (0, 2, 3)
    dice = (2 * (p * t).sum(dims) + smooth) / ((p * p).sum(dims) + (t * t).sum(dims) + smooth)
    return 0.5 * F.cross_entropy(logits, target, weight=weights) + 0.5 * (1 - dice).mean()


def segmentation_loss(logits, target, weights=None, smooth=SMOOTH):
    """bce_dice for one output channel, ce_dice otherwise."""
    if logits.shape[1] == 1:
        return bce_dice(logits[:, 0], target, smooth)
    return ce_dice(logits, target, weights, smooth)


def sgd(groups):
    """SGD with momentum 0.9 and weight decay 1e-4 on all parameters."""
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
