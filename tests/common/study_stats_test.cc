// common/study_stats against its definition and against Debian's python3-scipy.
#include "common/study/study_stats.h"

#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/trainer/python_peer.h"

namespace retina {
namespace {

TEST(SummariseTest, MeanSampleStdMedianRange) {
  const Summary s = Summarise({0.5, 0.7, 0.6, 0.9});
  EXPECT_EQ(s.n, 4);
  EXPECT_DOUBLE_EQ(s.mean, 0.675);
  EXPECT_NEAR(s.std, 0.17078251276599330, 1e-15);  // sqrt(0.0875 / 3)
  EXPECT_DOUBLE_EQ(s.median, 0.65);
  EXPECT_DOUBLE_EQ(s.min, 0.5);
  EXPECT_DOUBLE_EQ(s.max, 0.9);
  EXPECT_EQ(Summarise({}).n, 0);
  EXPECT_EQ(Summarise({3}).std, 0);
}

TEST(MannWhitneyTest, SeparatedSixAndSixIsTwoOver924) {
  // Every x above every y: U1 = 36, and 2 of the C(12,6) = 924 splits are as extreme.
  const MannWhitney r = MannWhitneyU({0.9, 0.8, 0.85, 0.95, 0.82, 0.88}, {0.1, 0.2, 0.3, 0.15, 0.25, 0.12});
  EXPECT_EQ(r.u1, 36);
  EXPECT_EQ(r.u2, 0);
  EXPECT_EQ(r.method, "exact");
  EXPECT_NEAR(r.p, 2.0 / 924, 1e-15);
  EXPECT_EQ(r.rank_biserial, 1);
  EXPECT_STREQ(SignificanceMark(r.p), "**");
}

TEST(MannWhitneyTest, EmptyAndAllTied) {
  EXPECT_EQ(MannWhitneyU({}, {1, 2}).method, "none");
  EXPECT_EQ(MannWhitneyU({}, {1, 2}).p, 1);
  const MannWhitney tied = MannWhitneyU({0.5, 0.5, 0.5}, {0.5, 0.5});
  EXPECT_EQ(tied.p, 1);
  EXPECT_EQ(tied.u1, 3);
  EXPECT_TRUE(tied.ties);
}

// Cases with and without ties, exact and asymptotic, from a fixed generator
// (raw mt19937 output, the same on every platform).
std::vector<std::pair<std::vector<double>, std::vector<double>>> Cases() {
  std::mt19937 gen(20251203);
  auto sample = [&](int n, double shift, int levels) {
    std::vector<double> v;
    for (int i = 0; i < n; ++i) {
      const double u = static_cast<double>(gen() % 1000000) / 1e6 + shift;
      v.push_back(levels > 0 ? std::round(u * levels) / levels : u);
    }
    return v;
  };
  std::vector<std::pair<std::vector<double>, std::vector<double>>> cases;
  const int sizes[][2] = {{1, 4}, {3, 5}, {6, 6}, {8, 8}, {5, 9}, {10, 12}, {30, 30}, {35, 40}, {70, 50}};
  for (const auto& nm : sizes) {
    for (double shift : {0.0, 0.3}) {
      cases.push_back({sample(nm[0], shift, 0), sample(nm[1], 0, 0)});
      // Ties: few distinct values. The exact permutation peer enumerates
      // every split, so ties stay with the small sizes (or the asymptotic ones).
      if ((nm[0] + nm[1] <= 14 && nm[0] >= 2) || nm[0] + nm[1] > 60) {  // (scipy permutes samples of 2+)
        cases.push_back({sample(nm[0], shift, 4), sample(nm[1], 0, 4)});
      }
    }
  }
  cases.push_back({{0.5, 0.5, 0.5, 0.5, 0.5, 0.5}, {0.5, 0.5, 0.5, 0.5, 0.5, 0.5}});
  return cases;
}

TEST(MannWhitneyTest, AgreesWithScipy) {
  const std::string missing = testing::PythonMissing("scipy.stats");
  if (!missing.empty()) GTEST_SKIP() << missing;
  testing::ScopedTempDir dir("mwu-");
  const auto cases = Cases();
  nlohmann::json j = nlohmann::json::array();
  for (const auto& [x, y] : cases) j.push_back({{"x", x}, {"y", y}});
  const std::string path = (dir.path() / "cases.json").string();
  std::ofstream(path) << j.dump();
  std::string out;
  ASSERT_EQ(testing::RunPython("stats_peer.py", path, &out), 0) << out;
  const nlohmann::json want = nlohmann::json::parse(out);
  ASSERT_EQ(want.size(), cases.size());
  int tied = 0, exact = 0, asymptotic = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const MannWhitney got = MannWhitneyU(cases[i].first, cases[i].second);
    SCOPED_TRACE("case " + std::to_string(i) + ": n1=" + std::to_string(got.n1) + " n2=" + std::to_string(got.n2) +
                 " ties=" + std::to_string(got.ties));
    EXPECT_EQ(got.method, want[i]["method"].get<std::string>());
    EXPECT_DOUBLE_EQ(got.u1, want[i]["u1"].get<double>());
    // Both sides compute in float64: exact p-values are ratios of integer
    // counts, asymptotic ones one erfc; 1e-12 is far above either's rounding.
    EXPECT_NEAR(got.p, want[i]["p"].get<double>(), 1e-12);
    tied += got.ties;
    exact += got.method == "exact";
    asymptotic += got.method == "asymptotic";
  }
  // The cases cover every branch.
  EXPECT_GT(tied, 5);
  EXPECT_GT(exact, 10);
  EXPECT_GE(asymptotic, 4);
}

}  // namespace
}  // namespace retina
