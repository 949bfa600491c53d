#include "common/study/study_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace retina {

Summary Summarise(const std::vector<double>& values) {
  Summary s;
  s.n = static_cast<int>(values.size());
  if (s.n == 0) return s;
  std::vector<double> v = values;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / s.n;
  s.median = s.n % 2 == 1 ? v[s.n / 2] : 0.5 * (v[s.n / 2 - 1] + v[s.n / 2]);
  if (s.n > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / (s.n - 1));
  }
  return s;
}

namespace {

// Twice the midranks (1-based) of `pooled`, so that ties stay integers, and
// the tie term sum(t^3 - t) over groups of equal values.
std::vector<int> TwiceMidranks(const std::vector<double>& pooled, double* tie_term) {
  const int n = static_cast<int>(pooled.size());
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return pooled[a] < pooled[b]; });
  std::vector<int> twice(n);
  *tie_term = 0;
  for (int i = 0; i < n;) {
    int j = i;
    while (j + 1 < n && pooled[order[j + 1]] == pooled[order[i]]) ++j;
    // Ranks i+1 .. j+1 share their mean (i + j + 2) / 2.
    for (int k = i; k <= j; ++k) twice[order[k]] = i + j + 2;
    const double t = j - i + 1;
    *tie_term += t * t * t - t;
    i = j + 1;
  }
  return twice;
}

// P(W >= w) and P(W <= w) for W the sum of n1 of the `twice` values drawn
// without replacement, every subset equally likely (the permutation null).
void PermutationTails(const std::vector<int>& twice, int n1, int w, double* upper, double* lower) {
  const int total = std::accumulate(twice.begin(), twice.end(), 0);
  // count[j][s]: subsets of size j of the items so far with sum s. long double
  // holds C(60, 30) ~ 1e17 exactly enough for a ratio.
  std::vector<std::vector<long double>> count(n1 + 1, std::vector<long double>(total + 1, 0.0L));
  count[0][0] = 1;
  int reach = 0;
  for (int v : twice) {
    reach += v;
    for (int j = n1; j >= 1; --j) {
      for (int s = reach; s >= v; --s) count[j][s] += count[j - 1][s - v];
    }
  }
  long double all = 0, ge = 0, le = 0;
  for (int s = 0; s <= total; ++s) {
    all += count[n1][s];
    if (s >= w) ge += count[n1][s];
    if (s <= w) le += count[n1][s];
  }
  *upper = static_cast<double>(ge / all);
  *lower = static_cast<double>(le / all);
}

}  // namespace

MannWhitney MannWhitneyU(const std::vector<double>& x, const std::vector<double>& y) {
  MannWhitney r;
  r.n1 = static_cast<int>(x.size());
  r.n2 = static_cast<int>(y.size());
  if (r.n1 == 0 || r.n2 == 0) {
    r.method = "none";
    return r;
  }
  std::vector<double> pooled = x;
  pooled.insert(pooled.end(), y.begin(), y.end());
  const int n = r.n1 + r.n2;
  double tie_term = 0;
  const std::vector<int> twice = TwiceMidranks(pooled, &tie_term);
  r.ties = tie_term > 0;
  const int w1 = std::accumulate(twice.begin(), twice.begin() + r.n1, 0);  // 2·R1
  const double n1n2 = static_cast<double>(r.n1) * r.n2;
  r.u1 = w1 / 2.0 - r.n1 * (r.n1 + 1) / 2.0;
  r.u2 = n1n2 - r.u1;
  r.common_language = r.u1 / n1n2;
  r.rank_biserial = 2 * r.common_language - 1;
  if (n <= kExactMaxN) {
    r.method = "exact";
    double upper = 1, lower = 1;
    PermutationTails(twice, r.n1, w1, &upper, &lower);
    r.p = std::min(1.0, 2 * std::min(upper, lower));
    return r;
  }
  r.method = "asymptotic";
  const double u = std::max(r.u1, r.u2);
  const double sd = std::sqrt(n1n2 / 12.0 * ((n + 1) - tie_term / (static_cast<double>(n) * (n - 1))));
  if (!(sd > 0)) {
    r.p = 1;  // every value tied: no evidence either way
    return r;
  }
  const double z = (u - n1n2 / 2 - 0.5) / sd;
  r.p = std::min(1.0, std::erfc(z / std::sqrt(2.0)));
  return r;
}

const char* SignificanceMark(double p) {
  if (p < 0.01) return "**";
  if (p < 0.05) return "*";
  return "";
}

}  // namespace retina
