#include "trainer/scoring/edt.h"

#include <algorithm>
#include <cstddef>
#include <limits>

namespace retina::trainer {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// 1D squared EDT of f (n samples, sample distance `step`) into d, using
// scratch v (n) and z (n + 1).
void Transform1d(const double* f, double* d, int64_t n, double step, std::vector<int64_t>& v, std::vector<double>& z) {
  const double s2 = step * step;
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (f[q] == kInf) continue;
    while (k >= 0) {
      const int64_t p = v[k];
      // Intersection of the parabolas rooted at p and q (in index units).
      const double s = ((f[q] + s2 * q * q) - (f[p] + s2 * p * p)) / (2 * s2 * (q - p));
      if (s <= z[k]) {
        --k;
        continue;
      }
      ++k;
      v[k] = q;
      z[k] = s;
      z[k + 1] = kInf;
      break;
    }
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -kInf;
      z[1] = kInf;
    }
  }
  if (k < 0) {
    for (int64_t q = 0; q < n; ++q) d[q] = kInf;
    return;
  }
  int64_t j = 0;
  for (int64_t q = 0; q < n; ++q) {
    while (z[j + 1] < q) ++j;
    const double dq = static_cast<double>(q - v[j]) * step;
    d[q] = dq * dq + f[v[j]];
  }
}

}  // namespace

std::vector<double> SquaredDistanceTransform(const uint8_t* features, const std::array<int64_t, 3>& shape,
                                             const std::array<double, 3>& spacing) {
  const int64_t nz = shape[0], ny = shape[1], nx = shape[2];
  std::vector<double> g(nz * ny * nx);
  for (size_t i = 0; i < g.size(); ++i) g[i] = features[i] ? 0.0 : kInf;
  const int64_t longest = std::max({nz, ny, nx});
  std::vector<double> line(longest), out(longest), z(longest + 1);
  std::vector<int64_t> v(longest);
  // Along x, then y, then z; each pass sees the previous one's result.
  const std::array<int64_t, 3> strides{ny * nx, nx, 1};
  for (int axis = 2; axis >= 0; --axis) {
    const int64_t n = shape[axis], stride = strides[axis];
    if (n == 1) continue;
    for (int64_t a = 0; a < nz * ny * nx; ++a) {
      // `a` enumerates voxels whose coordinate along `axis` is 0.
      const int64_t coord = (a / stride) % n;
      if (coord != 0) continue;
      for (int64_t i = 0; i < n; ++i) line[i] = g[a + i * stride];
      Transform1d(line.data(), out.data(), n, spacing[axis], v, z);
      for (int64_t i = 0; i < n; ++i) g[a + i * stride] = out[i];
    }
  }
  return g;
}

}  // namespace retina::trainer
