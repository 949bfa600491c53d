#include "trainer/scoring/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "trainer/scoring/edt.h"

namespace retina::trainer {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double Ratio(double num, double den, bool both_empty) {
  if (both_empty) return 1.0;
  return den > 0 ? num / den : 0.0;
}

}  // namespace

std::vector<uint8_t> KeepTouchingComponents(const std::vector<uint8_t>& pred, const std::vector<uint8_t>& truth,
                                            const std::array<int64_t, 3>& shape) {
  const int64_t nz = shape[0], ny = shape[1], nx = shape[2];
  std::vector<int32_t> label(pred.size(), 0);
  std::vector<uint8_t> out(pred.size(), 0);
  std::vector<int64_t> stack, members;
  int32_t next = 0;
  for (int64_t start = 0; start < static_cast<int64_t>(pred.size()); ++start) {
    if (!pred[start] || label[start]) continue;
    ++next;
    bool touches = false;
    members.clear();
    stack.assign(1, start);
    label[start] = next;
    while (!stack.empty()) {
      const int64_t i = stack.back();
      stack.pop_back();
      members.push_back(i);
      touches = touches || truth[i];
      const int64_t z = i / (ny * nx), y = (i / nx) % ny, x = i % nx;
      for (int64_t dz = -1; dz <= 1; ++dz) {
        for (int64_t dy = -1; dy <= 1; ++dy) {
          for (int64_t dx = -1; dx <= 1; ++dx) {
            const int64_t zz = z + dz, yy = y + dy, xx = x + dx;
            if (zz < 0 || zz >= nz || yy < 0 || yy >= ny || xx < 0 || xx >= nx) continue;
            const int64_t j = (zz * ny + yy) * nx + xx;
            if (pred[j] && !label[j]) {
              label[j] = next;
              stack.push_back(j);
            }
          }
        }
      }
    }
    if (touches) for (int64_t i : members) out[i] = 1;
  }
  return out;
}

absl::StatusOr<std::vector<ClassMetrics>> ComputeMetrics(const Volume& pred, const Volume& gt, const MetricOptions& o) {
  if (pred.shape != gt.shape) {
    return absl::InvalidArgumentError(absl::StrCat("prediction is ", pred.shape[0], "x", pred.shape[1], "x",
                                                   pred.shape[2], " but ground truth is ", gt.shape[0], "x",
                                                   gt.shape[1], "x", gt.shape[2], " (z x y x x)"));
  }
  std::vector<int> classes = o.classes;
  if (classes.empty()) {
    std::set<int> present;
    for (uint8_t v : pred.data) if (v) present.insert(v);
    for (uint8_t v : gt.data) if (v) present.insert(v);
    classes.assign(present.begin(), present.end());
    if (classes.empty()) classes.push_back(1);
  }
  const int64_t plane = gt.shape[1] * gt.shape[2];
  std::vector<ClassMetrics> out;
  for (int c : classes) {
    if (c < 0 || c > 255) return absl::InvalidArgumentError(absl::StrCat("class ", c, " outside 0..255"));
    std::vector<uint8_t> p(pred.data.size()), g(gt.data.size());
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] = pred.data[i] == c;
      g[i] = gt.data[i] == c;
    }
    if (o.touching_only) p = KeepTouchingComponents(p, g, gt.shape);
    ClassMetrics m;
    m.cls = c;
    int64_t tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      tp += p[i] && g[i];
      fp += p[i] && !g[i];
      fn += !p[i] && g[i];
    }
    m.pred_voxels = tp + fp;
    m.gt_voxels = tp + fn;
    const bool both_empty = tp + fp + fn == 0;
    if (o.per_plane_iou) {
      double sum = 0;
      for (int64_t z = 0; z < gt.shape[0]; ++z) {
        int64_t inter = 0, uni = 0;
        for (int64_t i = z * plane; i < (z + 1) * plane; ++i) {
          inter += p[i] && g[i];
          uni += p[i] || g[i];
        }
        sum += (inter + 1e-5) / (uni + 1e-5);
      }
      m.iou = sum / gt.shape[0];
    } else {
      m.iou = Ratio(tp, tp + fp + fn, both_empty);
    }
    m.precision = Ratio(tp, tp + fp, both_empty);
    m.recall = Ratio(tp, tp + fn, both_empty);
    m.f1 = Ratio(2.0 * tp, 2.0 * tp + fp + fn, both_empty);
    m.mfd = kNaN;
    if ((o.distances || o.cremi) && m.pred_voxels > 0 && m.gt_voxels > 0) {
      const std::vector<double> to_gt = SquaredDistanceTransform(g.data(), gt.shape, gt.spacing);
      const std::vector<double> to_pred = SquaredDistanceTransform(p.data(), gt.shape, gt.spacing);
      double h_pg = 0, h_gp = 0, sum_pg = 0, sum_gp = 0;
      const double tol2 = o.tolerance * o.tolerance;
      for (size_t i = 0; i < p.size(); ++i) {
        if (p[i]) {
          h_pg = std::max(h_pg, to_gt[i]);
          sum_pg += std::sqrt(to_gt[i]);
          m.fp += to_gt[i] > tol2;
        }
        if (g[i]) {
          h_gp = std::max(h_gp, to_pred[i]);
          sum_gp += std::sqrt(to_pred[i]);
          m.fn += to_pred[i] > tol2;
        }
      }
      m.mfd = (std::sqrt(h_pg) + std::sqrt(h_gp)) / 2;
      if (o.cremi) {
        m.adgt = sum_pg / m.pred_voxels;
        m.adf = sum_gp / m.gt_voxels;
        m.cremi_score = (m.adgt + m.adf) / 2;
        const double tp_p = 1.0 - static_cast<double>(m.fp) / m.pred_voxels, tp_r = 1.0 - static_cast<double>(m.fn) / m.gt_voxels;
        m.tolerant_f1 = tp_p + tp_r > 0 ? 2 * tp_p * tp_r / (tp_p + tp_r) : 0.0;
      }
    } else if (o.cremi) {
      m.adgt = m.adf = m.cremi_score = kNaN;
      m.fp = m.pred_voxels;
      m.fn = m.gt_voxels;
      m.tolerant_f1 = both_empty ? 1.0 : 0.0;
    }
    out.push_back(m);
  }
  return out;
}

}  // namespace retina::trainer
