"""scipy.stats' answer for the Mann-Whitney U cases of study_stats_test.

  stats_peer.py CASES.json  ->  prints JSON [{"u1", "p", "method"}] in order

Each case is {"x": [...], "y": [...]}. The method follows retina's
common/study/study_stats.h: up to 60 values in all, exact (scipy's
mannwhitneyu(method="exact") without ties, an exact permutation_test over U
with them); above, mannwhitneyu(method="asymptotic").
"""
import json
import sys

import numpy as np
from scipy import stats


def u1(x, y):
    ranks = stats.rankdata(np.concatenate([x, y]))
    return ranks[: len(x)].sum() - len(x) * (len(x) + 1) / 2


def answer(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    pooled = np.concatenate([x, y])
    ties = len(np.unique(pooled)) < len(pooled)
    res = stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
    if len(pooled) > 60:
        return {"u1": float(res.statistic), "p": float(res.pvalue), "method": "asymptotic"}
    if not ties:
        res = stats.mannwhitneyu(x, y, alternative="two-sided", method="exact")
        return {"u1": float(res.statistic), "p": float(res.pvalue), "method": "exact"}
    perm = stats.permutation_test((x, y), u1, permutation_type="independent", vectorized=False,
                                  n_resamples=np.inf, alternative="two-sided")
    return {"u1": float(res.statistic), "p": float(perm.pvalue), "method": "exact"}


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([answer(c["x"], c["y"]) for c in cases]))


if __name__ == "__main__":
    main()
