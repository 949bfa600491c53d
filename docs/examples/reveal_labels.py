#!/usr/bin/env python3
"""Stands in for a person labelling suggested blocks (docs/evaluation.md,
"The annotation loop"): for each row of SUGGESTIONS/suggestions.csv, the crop
retina suggest wrote (crops/rank-NNN.tif) goes to OUT/images and the same
block cut from a ground-truth volume to OUT/masks, under the same name: the
folder `retina-shard import --add --input OUT` takes.

    reveal_labels.py SUGGESTIONS TRUTH.tif OUT
"""
import csv
import os
import shutil
import sys

import tifffile


def main(suggestions, truth, out):
    labels = tifffile.imread(truth)
    if labels.ndim == 2:
        labels = labels[None]
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    with open(os.path.join(suggestions, "suggestions.csv")) as f:
        for row in csv.DictReader(f):
            rank, z, y, x = int(row["rank"]), int(row["z"]), int(row["y"]), int(row["x"])
            h, w = int(row["height"]), int(row["width"])
            name = "rank-%03d.tif" % rank
            shutil.copy(os.path.join(suggestions, "crops", name), os.path.join(out, "images", name))
            tifffile.imwrite(os.path.join(out, "masks", name), labels[z, y:y + h, x:x + w])
    print("labelled", len(os.listdir(os.path.join(out, "masks"))), "blocks into", out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
