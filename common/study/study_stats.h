// The statistics of a study (docs/evaluation.md, "Studies"): summaries of the
// per-seed scores of one cell, and the two-sided Mann-Whitney U test between
// two initialisations, as the RETINA paper's Fig 3b uses it.
//
// The test matches scipy.stats (checked against Debian's python3-scipy by
// tests/common/study_stats_test.cc):
//   - up to kExactMaxN values in all, the p-value is exact: the permutation
//     distribution of U over all C(n1+n2, n1) splits of the pooled midranks,
//     p = min(1, 2·min(P(U ≥ u), P(U ≤ u))). Without ties this is
//     scipy.stats.mannwhitneyu(method="exact"); with ties it is
//     scipy.stats.permutation_test over U (scipy's mannwhitneyu falls back to
//     the normal approximation there);
//   - above, the normal approximation with the tie correction and the
//     continuity correction, scipy's method="asymptotic".
#pragma once

#include <string>
#include <vector>

namespace retina {

struct Summary {
  int n = 0;
  double mean = 0, std = 0, median = 0, min = 0, max = 0;  // std: sample (n-1); 0 when n < 2
};
// The summary of `values` (n = 0 and zeros for none).
Summary Summarise(const std::vector<double>& values);

inline constexpr int kExactMaxN = 60;

struct MannWhitney {
  int n1 = 0, n2 = 0;
  double u1 = 0;      // U of the first sample: #(x > y) + #(x = y)/2 over all pairs
  double u2 = 0;      // n1·n2 - u1
  double p = 1;       // two-sided; 1 when either sample is empty or every value is tied
  bool ties = false;  // pooled values with ties
  std::string method; // "exact" | "asymptotic" | "none" (a sample is empty)
  // Effect sizes: the common-language effect size P(X > Y) + P(X = Y)/2
  // (= u1 / (n1·n2)) and the rank-biserial correlation 2·cl - 1, in [-1, 1],
  // positive when the first sample tends to be larger.
  double common_language = 0.5, rank_biserial = 0;
};
MannWhitney MannWhitneyU(const std::vector<double>& x, const std::vector<double>& y);

// "**" below 0.01, "*" below 0.05, else "" (the paper's marks).
const char* SignificanceMark(double p);

}  // namespace retina
