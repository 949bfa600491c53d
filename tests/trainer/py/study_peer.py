"""Checks of a study's outputs by independent Python tools.

  study_peer.py pvalues STUDY.json   every Mann-Whitney test in the aggregate
                                     recomputed by scipy.stats (as stats_peer.py)
                                     from the per-seed values of its cells
  study_peer.py svg DIR              every *.svg in DIR parses as XML (ElementTree);
                                     the curves have a band and a mean line per
                                     init with scores, the box plots a box per init
                                     and a dot per run
Prints what it checked; exits 1 with the reason on a mismatch.
"""
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"


def pvalues(path):
    from stats_peer import answer
    with open(path) as f:
        study = json.load(f)
    cells = {(c["dataset"], c["arm"], c["step"]): c for c in study["cells"]}
    checked = 0
    for t in study["tests"]:
        def values(arm):
            c = cells[(t["dataset"], arm, t["step"])]
            v = c["metrics"].get(t["metric"], {}).get(t["class"], {"values": []})["values"]
            return [x for x in v if x is not None]
        x, y = values(t["a"]), values(t["b"])
        if len(x) < 2 or len(y) < 2:
            continue  # scipy's permutation test needs 2+ per sample
        want = answer(x, y)
        if abs(want["p"] - t["p"]) > 1e-12 or abs(want["u1"] - t["u1"]) > 1e-9:
            sys.exit(f"{t['metric']}/{t['class']} arm {t['a']} vs {t['b']}: retina p={t['p']} U={t['u1']}, scipy {want}")
        checked += 1
    if checked == 0:
        sys.exit("no test with 2+ runs per side to check")
    print(f"{checked} Mann-Whitney tests agree with scipy.stats")


def svg(directory):
    files = sorted(glob.glob(os.path.join(directory, "*.svg")))
    if not files:
        sys.exit(f"no SVG in {directory}")
    with open(os.path.join(directory, "study.json")) as f:
        study = json.load(f)
    arms = len(study["arms"])
    for path in files:
        root = ET.parse(path).getroot()
        if root.tag != SVG + "svg":
            sys.exit(f"{path}: root is {root.tag}")
        classes = [e.get("class") for e in root.iter()]
        name = os.path.basename(path)
        if name.startswith("curves"):
            if classes.count("mean") != arms or classes.count("band") != arms:
                sys.exit(f"{name}: {classes.count('mean')} mean lines, {classes.count('band')} bands for {arms} inits")
        elif name.startswith("boxplot"):
            runs = sum(1 for c in study["children"] if c["state"] == "SUCCEEDED")
            if classes.count("box") != arms or classes.count("seed") != runs:
                sys.exit(f"{name}: {classes.count('box')} boxes, {classes.count('seed')} dots; want {arms}, {runs}")
        print(f"{name}: parses; {len(classes)} elements")


if __name__ == "__main__":
    {"pvalues": pvalues, "svg": svg}[sys.argv[1]](sys.argv[2])
