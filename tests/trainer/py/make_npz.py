"""Writes a small R50+ViT .npz in Google's key names and layouts (HWIO convs,
[hidden, heads, d] attention kernels, a class token on the position grid)
for a config of trainer/model/python/transunet.py, and the state dict the import must
produce, converted here independently with numpy/torch.

  make_npz.py NAME IMAGE_SIZE NPZ_GRID COMPRESSED OUTDIR
  -> OUTDIR/vit.npz, OUTDIR/expected.pt (torch.save of an OrderedDict)
"""
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

# The project's Python TransUNet (also the architecture of our BioImage.IO packages).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "trainer", "model", "python"))
from transunet import CONFIGS  # noqa: E402


def main():
    name, size, npz_grid, compressed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
    c = CONFIGS[name]
    rng = np.random.default_rng(7)
    arrays, expected = {}, OrderedDict()
    hidden, heads = c["hidden"], c["heads"]
    d = hidden // heads

    def arr(key, shape):
        a = rng.standard_normal(shape).astype(np.float32)
        arrays[key] = a
        return a

    def conv(key, kh, kw, cin, cout):  # HWIO -> OIHW
        return torch.from_numpy(np.ascontiguousarray(arr(key, (kh, kw, cin, cout)).transpose(3, 2, 0, 1)))

    def vec(key, n):
        return torch.from_numpy(arr(key, (n,)))

    emb, trunk = "transformer.embeddings.", "transformer.embeddings.hybrid_model."
    pos = arr("Transformer/posembed_input/pos_embedding", (1, npz_grid * npz_grid + 1, hidden))
    grid = size // 16
    g = torch.from_numpy(pos[:, 1:]).reshape(1, npz_grid, npz_grid, hidden).permute(0, 3, 1, 2)
    if npz_grid != grid:
        g = F.interpolate(g, size=(grid, grid), mode="bilinear", align_corners=True)
    expected[emb + "position_embeddings"] = g.permute(0, 2, 3, 1).reshape(1, grid * grid, hidden)
    w = c["width"]
    expected[trunk + "root.conv.weight"] = conv("conv_root/kernel", 7, 7, 3, w)
    expected[trunk + "root.gn.weight"] = vec("gn_root/scale", w)
    expected[trunk + "root.gn.bias"] = vec("gn_root/bias", w)
    cin = w
    for b, units in enumerate((3, 4, 9)):
        cout, cmid = w * 4 * 2 ** b, w * 2 ** b
        for u in range(1, units + 1):
            src, dst = f"block{b + 1}/unit{u}/", f"{trunk}body.block{b + 1}.unit{u}."
            ins = cin if u == 1 else cout
            for n, (kk, ci, co) in {"1": (1, ins, cmid), "2": (3, cmid, cmid), "3": (1, cmid, cout)}.items():
                ch = co
                expected[dst + f"gn{n}.weight"] = vec(src + f"gn{n}/scale", ch)
                expected[dst + f"gn{n}.bias"] = vec(src + f"gn{n}/bias", ch)
                expected[dst + f"conv{n}.weight"] = conv(src + f"conv{n}/kernel", kk, kk, ci, co)
            if u == 1:
                expected[dst + "downsample.weight"] = conv(src + "conv_proj/kernel", 1, 1, cin, cout)
                expected[dst + "gn_proj.weight"] = vec(src + "gn_proj/scale", cout)
                expected[dst + "gn_proj.bias"] = vec(src + "gn_proj/bias", cout)
        cin = cout
    expected[emb + "patch_embeddings.weight"] = conv("embedding/kernel", 1, 1, w * 16, hidden)
    expected[emb + "patch_embeddings.bias"] = vec("embedding/bias", hidden)
    for i in range(c["layers"]):
        src, dst = f"Transformer/encoderblock_{i}/", f"transformer.encoder.layer.{i}."
        expected[dst + "attention_norm.weight"] = vec(src + "LayerNorm_0/scale", hidden)
        expected[dst + "attention_norm.bias"] = vec(src + "LayerNorm_0/bias", hidden)
        expected[dst + "ffn_norm.weight"] = vec(src + "LayerNorm_2/scale", hidden)
        expected[dst + "ffn_norm.bias"] = vec(src + "LayerNorm_2/bias", hidden)
        expected[dst + "ffn.fc1.weight"] = torch.from_numpy(arr(src + "MlpBlock_3/Dense_0/kernel", (hidden, c["mlp"])).T.copy())
        expected[dst + "ffn.fc1.bias"] = vec(src + "MlpBlock_3/Dense_0/bias", c["mlp"])
        expected[dst + "ffn.fc2.weight"] = torch.from_numpy(arr(src + "MlpBlock_3/Dense_1/kernel", (c["mlp"], hidden)).T.copy())
        expected[dst + "ffn.fc2.bias"] = vec(src + "MlpBlock_3/Dense_1/bias", hidden)
        att = src + "MultiHeadDotProductAttention_1/"
        for q in ("query", "key", "value"):
            k = arr(att + q + "/kernel", (hidden, heads, d))
            expected[dst + f"attn.{q}.weight"] = torch.from_numpy(k.reshape(hidden, hidden).T.copy())
            expected[dst + f"attn.{q}.bias"] = torch.from_numpy(arr(att + q + "/bias", (heads, d)).reshape(-1))
        k = arr(att + "out/kernel", (heads, d, hidden))
        expected[dst + "attn.out.weight"] = torch.from_numpy(k.reshape(hidden, hidden).T.copy())
        expected[dst + "attn.out.bias"] = vec(att + "out/bias", hidden)
    expected["transformer.encoder.encoder_norm.weight"] = vec("Transformer/encoder_norm/scale", hidden)
    expected["transformer.encoder.encoder_norm.bias"] = vec("Transformer/encoder_norm/bias", hidden)
    arrays["cls"] = rng.standard_normal((1, 1, hidden)).astype(np.float32)
    arrays["head/kernel"] = rng.standard_normal((hidden, 10)).astype(np.float32)  # ignored
    (np.savez_compressed if compressed else np.savez)(f"{out}/vit.npz", **arrays)
    torch.save(expected, f"{out}/expected.pt")


if __name__ == "__main__":
    main()
