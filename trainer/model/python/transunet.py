"""The project's PyTorch TransUNet R50-ViT-B/16, an independent
implementation of METHOD.md section 1 with the reference's module names.
Two uses: the tests' parity peer of the C++ model (weights and outputs,
tests/trainer/py/), and the architecture source shipped in every BioImage.IO
package we export (trainer/model/weights/bioimageio.h: callable
VisionTransformer, kwargs name, image_size, classes). Self-contained: torch
only.

Written from the equations, not from the C++ code: weight-standardised convs,
GroupNorm(32, eps 1e-6), GN_proj with one group per channel (eps 1e-5),
max-pool without padding and the zero skip padding, 1x1 patch embedding,
pre-norm blocks with exact GELU, DecoderCup with align_corners=True.
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "r50-vit-b16": dict(width=64, hidden=768, mlp=3072, heads=12, layers=12, head_channels=512,
                        decoder=(256, 128, 64, 16), skips=(512, 256, 64, 0)),
    "r50-vit-b16-192": dict(width=64, hidden=192, mlp=768, heads=12, layers=12, head_channels=512,
                            decoder=(256, 128, 64, 16), skips=(512, 256, 64, 0)),
    "tiny": dict(width=32, hidden=64, mlp=128, heads=4, layers=2, head_channels=64,
                 decoder=(64, 32, 16, 16), skips=(256, 128, 32, 0)),
}


class StdConv2d(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def std_conv(cin, cout, k, stride=1):
    return StdConv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class PreActBottleneck(nn.Module):
    def __init__(self, cin, cout, cmid, stride):
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv1 = std_conv(cin, cmid, 1)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = std_conv(cmid, cmid, 3, stride)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv3 = std_conv(cmid, cout, 1)
        if stride != 1 or cin != cout:
            self.downsample = std_conv(cin, cout, 1, stride)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x):
        residual = self.gn_proj(self.downsample(x)) if hasattr(self, "downsample") else x
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(residual + y)


class ResNetV2(nn.Module):
    def __init__(self, width, units=(3, 4, 9)):
        super().__init__()
        self.root = nn.Sequential(OrderedDict([
            ("conv", std_conv(3, width, 7, 2)),
            ("gn", nn.GroupNorm(32, width, eps=1e-6)),
            ("relu", nn.ReLU()),
        ]))
        blocks = []
        cin = width
        for b, n in enumerate(units):
            cout, cmid = width * 4 * 2 ** b, width * 2 ** b
            unit_list = [(f"unit{u}", PreActBottleneck(cin if u == 1 else cout, cout, cmid,
                                                      2 if (u == 1 and b > 0) else 1))
                         for u in range(1, n + 1)]
            blocks.append((f"block{b + 1}", nn.Sequential(OrderedDict(unit_list))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(blocks))

    def forward(self, x):
        size = x.shape[2]
        feats = []
        x = self.root(x)
        feats.append(x)
        x = F.max_pool2d(x, 3, 2, 0)
        for i in range(len(self.body) - 1):
            x = self.body[i](x)
            right = size // 4 // (i + 1)
            pad = right - x.shape[2]
            feats.append(F.pad(x, (0, pad, 0, pad)) if pad else x)
        return self.body[-1](x), feats[::-1]


class Attention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.value, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x):
        b, n, h = x.shape
        d = h // self.heads
        split = lambda t: t.view(b, n, self.heads, d).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        return self.out((probs @ v).transpose(1, 2).reshape(b, n, h))


class Mlp(nn.Module):
    def __init__(self, hidden, mlp):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)
        self.dropout = nn.Dropout(0.1)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x):
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, hidden, mlp, heads):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn = Mlp(hidden, mlp)
        self.attn = Attention(hidden, heads)

    def forward(self, x):
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList([Block(c["hidden"], c["mlp"], c["heads"]) for _ in range(c["layers"])])
        self.encoder_norm = nn.LayerNorm(c["hidden"], eps=1e-6)

    def forward(self, x):
        for blk in self.layer:
            x = blk(x)
        return self.encoder_norm(x)


class Embeddings(nn.Module):
    def __init__(self, c, image_size):
        super().__init__()
        grid = image_size // 16
        self.hybrid_model = ResNetV2(c["width"])
        self.patch_embeddings = nn.Conv2d(c["width"] * 16, c["hidden"], 1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid, c["hidden"]))
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        x, feats = self.hybrid_model(x)
        x = self.patch_embeddings(x).flatten(2).transpose(-1, -2)
        return self.dropout(x + self.position_embeddings), feats


class Transformer(nn.Module):
    def __init__(self, c, image_size):
        super().__init__()
        self.embeddings = Embeddings(c, image_size)
        self.encoder = Encoder(c)

    def forward(self, x):
        x, feats = self.embeddings(x)
        return self.encoder(x), feats


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin, cout, skip):
        super().__init__()
        self.conv1 = conv_bn_relu(cin + skip, cout)
        self.conv2 = conv_bn_relu(cout, cout)
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)

    def forward(self, x, skip=None):
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv_more = conv_bn_relu(c["hidden"], c["head_channels"])
        ins = [c["head_channels"]] + list(c["decoder"][:-1])
        self.blocks = nn.ModuleList([DecoderBlock(i, o, s) for i, o, s in zip(ins, c["decoder"], c["skips"])])
        self.skips = c["skips"]

    def forward(self, x, feats):
        b, n, h = x.shape
        side = int(math.sqrt(n))
        x = self.conv_more(x.permute(0, 2, 1).contiguous().view(b, h, side, side))
        for i, blk in enumerate(self.blocks):
            x = blk(x, feats[i] if self.skips[i] > 0 else None)
        return x


class FinalDecoder(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 1, 3, padding=1)


class VisionTransformer(nn.Module):
    def __init__(self, name="r50-vit-b16", image_size=224, classes=1, reconstruction=False):
        super().__init__()
        c = CONFIGS[name]
        self.transformer = Transformer(c, image_size)
        self.decoder = DecoderCup(c)
        if reconstruction:
            self.FinalDecoder = FinalDecoder(c["decoder"][-1])
        self.segmentation_head = nn.Sequential(nn.Conv2d(c["decoder"][-1], classes, 3, padding=1), nn.Identity())
        self.reconstruction = reconstruction

    def forward(self, x):
        if x.size(1) == 1:
            x = x.repeat(1, 3, 1, 1)
        x, feats = self.transformer(x)
        x = self.decoder(x, feats)
        return self.FinalDecoder.conv1(x) if self.reconstruction else self.segmentation_head(x)
