#include <cmath>
#include <limits>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "trainer/scoring/edt.h"
#include "trainer/scoring/metrics.h"

namespace retina::trainer {
namespace {

using ::testing::HasSubstr;

Volume Vol(std::array<int64_t, 3> shape, std::vector<uint8_t> data, std::array<double, 3> spacing = {1, 1, 1}) {
  Volume v;
  v.shape = shape;
  v.spacing = spacing;
  v.data = std::move(data);
  return v;
}

double BruteSquared(const std::vector<uint8_t>& f, const std::array<int64_t, 3>& s, const std::array<double, 3>& sp,
                    int64_t i) {
  double best = std::numeric_limits<double>::infinity();
  const int64_t z = i / (s[1] * s[2]), y = (i / s[2]) % s[1], x = i % s[2];
  for (int64_t j = 0; j < static_cast<int64_t>(f.size()); ++j) {
    if (!f[j]) continue;
    const double dz = (j / (s[1] * s[2]) - z) * sp[0], dy = ((j / s[2]) % s[1] - y) * sp[1], dx = (j % s[2] - x) * sp[2];
    best = std::min(best, dz * dz + dy * dy + dx * dx);
  }
  return best;
}

TEST(Edt, MatchesBruteForceIn2DAnd3DWithAnisotropicSpacing) {
  std::mt19937 rng(5);
  for (const auto& [shape, spacing] : {std::pair<std::array<int64_t, 3>, std::array<double, 3>>{{1, 17, 23}, {1, 1, 1}},
                                       {{1, 20, 9}, {1, 2.5, 0.7}},
                                       {{6, 11, 13}, {40, 4, 4}},
                                       {{9, 8, 7}, {1.3, 1, 2}}}) {
    for (double density : {0.01, 0.2, 0.7}) {
      std::vector<uint8_t> f(shape[0] * shape[1] * shape[2]);
      for (auto& v : f) v = std::uniform_real_distribution<double>(0, 1)(rng) < density;
      f[rng() % f.size()] = 1;
      const std::vector<double> d = SquaredDistanceTransform(f.data(), shape, spacing);
      for (int64_t i = 0; i < static_cast<int64_t>(f.size()); ++i) {
        ASSERT_NEAR(d[i], BruteSquared(f, shape, spacing, i), 1e-9 * (1 + d[i])) << "voxel " << i;
      }
    }
  }
  std::vector<uint8_t> none(30, 0);
  for (double v : SquaredDistanceTransform(none.data(), {1, 5, 6}, {1, 1, 1})) EXPECT_TRUE(std::isinf(v));
}

TEST(Metrics, HandComputedCases) {
  // 1x4x4: prediction covers 3 pixels, 2 of them in the 4-pixel truth.
  Volume gt = Vol({1, 4, 4}, {1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  Volume pred = Vol({1, 4, 4}, {1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  MetricOptions o;
  std::vector<ClassMetrics> m = *ComputeMetrics(pred, gt, o);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_DOUBLE_EQ(m[0].iou, 2.0 / 5);
  EXPECT_DOUBLE_EQ(m[0].precision, 2.0 / 3);
  EXPECT_DOUBLE_EQ(m[0].recall, 2.0 / 4);
  EXPECT_DOUBLE_EQ(m[0].f1, 4.0 / 7);
  // Hausdorff: pred (0,2) is 1 from truth; truth (0,1),(1,1) are 1 from pred -> MFD 1.
  EXPECT_DOUBLE_EQ(m[0].mfd, 1.0);

  // Empty prediction; empty truth; both empty; single pixel.
  Volume empty = Vol({1, 4, 4}, std::vector<uint8_t>(16, 0));
  o.classes = {1};
  m = *ComputeMetrics(empty, gt, o);
  EXPECT_EQ(m[0].iou, 0);
  EXPECT_EQ(m[0].recall, 0);
  EXPECT_TRUE(std::isnan(m[0].mfd));
  m = *ComputeMetrics(pred, empty, o);
  EXPECT_EQ(m[0].iou, 0);
  EXPECT_EQ(m[0].precision, 0);
  m = *ComputeMetrics(empty, empty, o);
  EXPECT_EQ(m[0].iou, 1);
  EXPECT_EQ(m[0].f1, 1);
  o.per_plane_iou = true;
  EXPECT_DOUBLE_EQ(ComputeMetrics(empty, empty, o)->at(0).iou, 1.0);  // (0 + 1e-5) / (0 + 1e-5)
  o.per_plane_iou = false;
  Volume one = Vol({1, 4, 4}, std::vector<uint8_t>(16, 0));
  one.data[5] = 1;
  m = *ComputeMetrics(one, one, o);
  EXPECT_EQ(m[0].iou, 1);
  EXPECT_EQ(m[0].mfd, 0);
}

TEST(Metrics, AnisotropicCremiDistances) {
  // Truth: one voxel at z=0; prediction: the voxel above it (z=1) and one 3 columns away.
  Volume gt = Vol({2, 1, 4}, {1, 0, 0, 0, 0, 0, 0, 0}, {40, 4, 4});
  Volume pred = Vol({2, 1, 4}, {0, 0, 0, 1, 1, 0, 0, 0}, {40, 4, 4});
  MetricOptions o;
  o.cremi = true;
  o.tolerance = 20;
  const ClassMetrics m = ComputeMetrics(pred, gt, o)->at(0);
  // Distances pred->truth: 12 (3 columns x 4) and 40 (one section); truth->pred: 12.
  EXPECT_DOUBLE_EQ(m.adgt, (12.0 + 40.0) / 2);
  EXPECT_DOUBLE_EQ(m.adf, 12.0);
  EXPECT_DOUBLE_EQ(m.cremi_score, (26.0 + 12.0) / 2);
  EXPECT_EQ(m.fp, 1);  // the voxel 40 away is beyond 20
  EXPECT_EQ(m.fn, 0);
  EXPECT_DOUBLE_EQ(m.mfd, (40.0 + 12.0) / 2);
  EXPECT_DOUBLE_EQ(m.tolerant_f1, 2 * 0.5 * 1.0 / 1.5);
}

TEST(Metrics, RandomVolumesAgainstBruteForce) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 6; ++trial) {
    const std::array<int64_t, 3> shape{3, 7, 9};
    const std::array<double, 3> spacing{2.0, 1.0, 0.5};
    const int64_t n = shape[0] * shape[1] * shape[2];
    Volume pred = Vol(shape, std::vector<uint8_t>(n), spacing), gt = Vol(shape, std::vector<uint8_t>(n), spacing);
    for (int64_t i = 0; i < n; ++i) {
      pred.data[i] = rng() % 3;
      gt.data[i] = rng() % 3;
    }
    MetricOptions o;
    o.classes = {1, 2};
    const std::vector<ClassMetrics> m = *ComputeMetrics(pred, gt, o);
    for (const ClassMetrics& cm : m) {
      std::vector<uint8_t> p(n), g(n);
      int64_t inter = 0, uni = 0;
      for (int64_t i = 0; i < n; ++i) {
        p[i] = pred.data[i] == cm.cls;
        g[i] = gt.data[i] == cm.cls;
        inter += p[i] && g[i];
        uni += p[i] || g[i];
      }
      EXPECT_DOUBLE_EQ(cm.iou, static_cast<double>(inter) / uni);
      double h1 = 0, h2 = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (p[i]) h1 = std::max(h1, std::sqrt(BruteSquared(g, shape, spacing, i)));
        if (g[i]) h2 = std::max(h2, std::sqrt(BruteSquared(p, shape, spacing, i)));
      }
      EXPECT_NEAR(cm.mfd, (h1 + h2) / 2, 1e-9);
    }
  }
}

TEST(Metrics, PerezRuleKeepsOnlyTouchingComponentsAndShapesMustMatch) {
  // Two predicted blobs; only the left one touches the truth.
  Volume gt = Vol({1, 3, 7}, {1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  Volume pred = Vol({1, 3, 7}, {0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0});
  MetricOptions o;
  o.classes = {1};
  const double plain = ComputeMetrics(pred, gt, o)->at(0).precision;
  o.touching_only = true;
  const ClassMetrics kept = ComputeMetrics(pred, gt, o)->at(0);
  EXPECT_EQ(kept.pred_voxels, 4);  // the right blob (4 pixels) is dropped
  EXPECT_GT(kept.precision, plain);
  Volume other = Vol({1, 3, 6}, std::vector<uint8_t>(18, 0));
  absl::Status s = ComputeMetrics(other, gt, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("1x3x6 but ground truth is 1x3x7"));
}

}  // namespace
}  // namespace retina::trainer

#include <filesystem>

#include "tests/trainer/python_peer.h"
#include "trainer/prediction/inference.h"

namespace retina::trainer {
namespace {

TEST(SlidingWindow, OriginsClampTheLastWindow) {
  EXPECT_EQ(WindowOrigins(224, 224, 0.5), (std::vector<int64_t>{0}));
  EXPECT_EQ(WindowOrigins(500, 224, 0.5), (std::vector<int64_t>{0, 112, 224, 276}));
  EXPECT_EQ(WindowOrigins(300, 224, 0.7), (std::vector<int64_t>{0, 67, 76}));  // interval floor(224 * 0.3) = 67
  EXPECT_EQ(WindowOrigins(100, 224, 0.5), (std::vector<int64_t>{0}));
}

TEST(SlidingWindow, OneWindowEqualsAPlainForwardAndPointwiseModelsAreExact) {
  torch::manual_seed(0);
  absl::StatusOr<TransUNetConfig> c = NamedModelConfig("tiny", 32, 2, ModelHead::kSegmentation);
  VisionTransformer model(*c);
  model->eval();
  SlidingWindowOptions o;
  o.window = 32;
  const torch::Tensor img = torch::randn({32, 32});
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::allclose(SlidingWindowLogits(ModelForward(model), img, o), model(img.view({1, 1, 32, 32}))[0], 1e-5, 1e-6));
  // A pointwise (position-independent) model: overlapping windows, padding and
  // clamping must reproduce the full-image result exactly.
  const WindowForward pointwise = [](const torch::Tensor& x) { return torch::cat({x * 2 + 1, -x}, 1); };
  for (const auto& [h, w] : {std::pair<int64_t, int64_t>{70, 45}, {20, 90}, {32, 32}}) {
    const torch::Tensor big = torch::randn({h, w});
    for (double overlap : {0.0, 0.5, 0.7}) {
      o.overlap = overlap;
      const torch::Tensor got = SlidingWindowLogits(pointwise, big, o);
      EXPECT_TRUE(torch::allclose(got, torch::stack({big * 2 + 1, -big}), 1e-5, 1e-6)) << h << "x" << w << " " << overlap;
    }
  }
}

TEST(Orthoplane, AveragesThePerAxisProbabilities) {
  // A model whose logit depends only on which axis is being predicted (it
  // counts its calls): xy planes -> a, xz -> b, yz -> c.
  Volume raw;
  raw.shape = {3, 5, 7};
  raw.data.assign(3 * 5 * 7, 100);
  int64_t calls = 0;
  const double a = 2.0, b = -1.0, c = 0.5;
  const WindowForward axis_model = [&](const torch::Tensor& x) {
    const double v = calls < 3 ? a : (calls < 3 + 5 ? b : c);
    calls += x.size(0);
    return torch::full({x.size(0), 1, x.size(2), x.size(3)}, v);
  };
  SlidingWindowOptions o;
  o.window = 16;
  o.batch = 1;
  absl::StatusOr<VolumePrediction> p = PredictVolume(axis_model, raw, 0.5, 0.2, VolumeMode::kOrthoplane, o, true, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  const double expected = (1 / (1 + std::exp(-a)) + 1 / (1 + std::exp(-b)) + 1 / (1 + std::exp(-c))) / 3;
  EXPECT_TRUE(torch::allclose(p->probabilities, torch::full({1, 3, 5, 7}, expected), 1e-6, 1e-7));
  for (uint8_t l : p->labels.data) EXPECT_EQ(l, expected > 0.5 ? 1 : 0);
  EXPECT_EQ(calls, 3 + 5 + 7);
}

// Keeps what a PlaneWriter is given, in memory.
class CapturingWriter : public PlaneWriter {
 public:
  absl::Status Append(int64_t n, const uint8_t* plane_labels, const float* probabilities, int64_t channels) override {
    appends.push_back(n);
    labels.insert(labels.end(), plane_labels, plane_labels + n * plane);
    if (probabilities != nullptr) {
      chunks.push_back(torch::from_blob(const_cast<float*>(probabilities), {channels, n, plane}).clone());
    }
    return absl::OkStatus();
  }
  absl::Status Finish() override { return absl::OkStatus(); }
  int64_t plane = 0;
  std::vector<int64_t> appends;
  std::vector<uint8_t> labels;
  std::vector<torch::Tensor> chunks;  // [C, n, Y*X]
};

TEST(Orthoplane, SlabsReproduceTheWholeVolumeAndBoundTheirBuffers) {
  // A position-dependent model (a zero-padded convolution sees the window
  // border), so any missing or extra window along z would change the result.
  torch::manual_seed(0);
  // It runs in float64 and rounds to float32, so a window's logits do not
  // depend on how many windows share a batch (float32 kernels may block a
  // batch of 3 differently from a batch of 1 on some CPUs): the comparisons
  // below then hold on any machine.
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(1, 2, 5).padding(2));
  conv->to(torch::kDouble);
  const WindowForward model = [&](const torch::Tensor& x) {
    return (torch::tanh(conv(x.to(torch::kDouble))) * 3).to(torch::kFloat);
  };
  Volume raw;
  raw.shape = {45, 20, 18};
  raw.data.resize(45 * 20 * 18);
  std::mt19937 rng(1);
  for (uint8_t& v : raw.data) v = static_cast<uint8_t>(rng() % 256);
  SlidingWindowOptions o;
  o.window = 16;
  o.overlap = 0.7;
  o.batch = 3;
  absl::StatusOr<VolumePrediction> whole = PredictVolume(model, raw, 0.5, 0.2, VolumeMode::kOrthoplane, o, true, nullptr);
  ASSERT_TRUE(whole.ok()) << whole.status();
  int64_t previous_windows = 0;
  for (int64_t slab : {45, 16, 7, 1}) {
    SCOPED_TRACE(slab);
    std::unique_ptr<PlaneReader> in = VolumePlaneReader(raw);
    CapturingWriter w;
    w.plane = 20 * 18;
    int64_t last_done = 0, last_total = 0;
    absl::StatusOr<VolumeStreamStats> st = PredictVolumeStreaming(
        model, *in, 0.5, 0.2, VolumeMode::kOrthoplane, o, slab, true, w, [&](int64_t done, int64_t total) {
          EXPECT_EQ(done, last_done + 1);
          last_done = done;
          last_total = total;
        });
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->slabs, (45 + slab - 1) / slab);
    EXPECT_EQ(last_done, last_total);
    EXPECT_EQ(last_total, 45 + st->slabs * (20 + 18));
    EXPECT_EQ(w.appends.size(), static_cast<size_t>(st->slabs));
    EXPECT_EQ(w.labels, whole->labels.data);
    const torch::Tensor probs = torch::cat(w.chunks, 1).view({2, 45, 20, 18});
    EXPECT_TRUE(torch::allclose(probs, whole->probabilities, 1e-5, 1e-6))
        << (probs - whole->probabilities).abs().max().item<float>();
    if (slab == 45) {  // one slab: every plane of every axis, each with all its windows
      const auto n = [&](int64_t extent) { return static_cast<int64_t>(WindowOrigins(extent, 16, 0.7).size()); };
      EXPECT_EQ(st->windows, 45 * n(20) * n(18) + 20 * n(45) * n(18) + 18 * n(45) * n(20));
    }
    // Thinner slabs repeat the windows that straddle them.
    EXPECT_GT(st->windows, previous_windows);
    previous_windows = st->windows;
  }
  // The slab chosen for a budget fits it: 1 class, 2048 x 2048 planes, 224 window.
  const std::array<int64_t, 3> big = {1000, 2048, 2048};
  const int64_t plane = 2048 * 2048;
  SlidingWindowOptions r50;
  const int64_t s4 = SlabPlanesForBudget(big, 1, VolumeMode::kOrthoplane, r50, int64_t{4} << 30);
  EXPECT_GT(s4, 50);
  EXPECT_LE(s4 * plane * 6 + 2 * 224 * plane, int64_t{4} << 30);
  EXPECT_EQ(SlabPlanesForBudget(big, 1, VolumeMode::kOrthoplane, r50, 1), 1);
  EXPECT_EQ(SlabPlanesForBudget(big, 1, VolumeMode::kStack, r50, int64_t{1} << 40), 1000);
}

TEST(PlaneWriters, SlabsWrittenInOrderReadBackWholeAndUnfinishedLeaveNothing) {
  retina::testing::ScopedTempDir tmp("writers-");
  Volume v;
  v.shape = {5, 6, 7};
  v.spacing = {40, 4, 4};
  for (int i = 0; i < 5 * 6 * 7; ++i) v.data.push_back(static_cast<uint8_t>(i % 3));
  std::vector<float> probs(2 * 5 * 6 * 7);
  for (size_t i = 0; i < probs.size(); ++i) probs[i] = static_cast<float>(i) / 1000.0f;
  for (const std::string name : {"l.tif", "l.h5"}) {
    SCOPED_TRACE(name);
    const std::string path = (tmp.path() / name).string();
    const bool h5 = name == "l.h5";
    {
      absl::StatusOr<std::unique_ptr<PlaneWriter>> w = OpenPlaneWriter(path, v.shape, v.spacing, true, h5 ? 2 : 0);
      ASSERT_TRUE(w.ok()) << w.status();
      ASSERT_TRUE((*w)->Append(2, v.plane(0), nullptr, 0).ok() == !h5);
      EXPECT_FALSE(std::filesystem::exists(path));
    }  // destroyed unfinished
    for (const auto& e : std::filesystem::directory_iterator(tmp.path())) {
      EXPECT_NE(e.path().filename().string()[0], '.') << "a temporary was left: " << e.path();
    }
    absl::StatusOr<std::unique_ptr<PlaneWriter>> w = OpenPlaneWriter(path, v.shape, v.spacing, true, h5 ? 2 : 0);
    ASSERT_TRUE(w.ok());
    // Probabilities [C, n, Y, X] per slab, from the whole [C, Z, Y, X] array.
    auto slab_probs = [&](int64_t z0, int64_t n) {
      std::vector<float> out;
      for (int c = 0; c < 2; ++c) {
        const float* from = probs.data() + (c * 5 + z0) * 42;
        out.insert(out.end(), from, from + n * 42);
      }
      return out;
    };
    for (const auto& [z0, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {2, 1}, {3, 2}}) {
      const std::vector<float> p = slab_probs(z0, n);
      ASSERT_TRUE((*w)->Append(n, v.plane(z0), h5 ? p.data() : nullptr, h5 ? 2 : 0).ok());
    }
    EXPECT_THAT((*w)->Append(1, v.plane(0), nullptr, h5 ? 2 : 0).message(), HasSubstr("6 planes appended, the volume has 5"));
    ASSERT_TRUE((*w)->Finish().ok());
    absl::StatusOr<RawArray> back = ReadArray(h5 ? path + ":/labels" : path);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->shape, v.shape);
    EXPECT_EQ(back->bytes, v.data);
    EXPECT_TRUE(back->has_spacing);
    EXPECT_NEAR(back->spacing[0], 40, 1e-4);
    EXPECT_NEAR(back->spacing[2], 4, 1e-4);
    if (h5 && retina::testing::PythonMissing("h5py, numpy").empty()) {
      // h5py reads the probabilities as the [C, Z, Y, X] array they came from.
      const std::string cmd = retina::testing::Python() + " -c 'import h5py, numpy as np; p = h5py.File(\"" + path +
                              "\")[\"probabilities\"][...]; e = (np.arange(420) / 1000).astype(np.float32)"
                              ".reshape(2, 5, 6, 7); exit(0 if p.shape == e.shape and np.array_equal(p, e) else 1)'";
      EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    }
  }
  EXPECT_THAT(OpenPlaneWriter((tmp.path() / "x.png").string(), v.shape, v.spacing, true, 0).status().message(),
              HasSubstr("write .tif/.tiff or .h5/.hdf5"));
  EXPECT_THAT(OpenPlaneWriter((tmp.path() / "x.tif").string(), v.shape, v.spacing, true, 2).status().message(),
              HasSubstr("probabilities need an .h5 output"));
}

}  // namespace
}  // namespace retina::trainer
