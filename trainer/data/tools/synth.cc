#include "trainer/data/tools/synth.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace retina::trainer {
namespace {

constexpr double kPi = 3.14159265358979323846;

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9e3779b97f4a7c15ull + 0x1234567ull) {}
  uint64_t Bits() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double U() { return (Bits() >> 11) * (1.0 / 9007199254740992.0); }
  double U(double lo, double hi) { return lo + (hi - lo) * U(); }
  double Normal() {
    const double u1 = std::max(U(), 1e-300), u2 = U();
    return std::sqrt(-2 * std::log(u1)) * std::cos(2 * kPi * u2);
  }

 private:
  uint64_t s_;
};

struct Vec3 {
  double z, y, x;
};

// A random rotation (rows: the body axes in world coordinates).
std::array<Vec3, 3> RandomAxes(Rng& rng, bool planar) {
  // Random unit quaternion (Shoemake); for 2D images a rotation about z only.
  if (planar) {
    const double a = rng.U(0, 2 * kPi);
    return {Vec3{0, std::sin(a), std::cos(a)}, Vec3{0, std::cos(a), -std::sin(a)}, Vec3{1, 0, 0}};
  }
  const double u1 = rng.U(), u2 = rng.U(0, 2 * kPi), u3 = rng.U(0, 2 * kPi);
  const double a = std::sqrt(1 - u1) * std::sin(u2), b = std::sqrt(1 - u1) * std::cos(u2);
  const double c = std::sqrt(u1) * std::sin(u3), d = std::sqrt(u1) * std::cos(u3);
  return {Vec3{1 - 2 * (c * c + d * d), 2 * (b * c - a * d), 2 * (b * d + a * c)},
          Vec3{2 * (b * c + a * d), 1 - 2 * (b * b + d * d), 2 * (c * d - a * b)},
          Vec3{2 * (b * d - a * c), 2 * (c * d + a * b), 1 - 2 * (b * b + c * c)}};
}

double Dot(const Vec3& a, const Vec3& b) { return a.z * b.z + a.y * b.y + a.x * b.x; }

}  // namespace

namespace {

// The volume being drawn: grey levels (float until the noise), labels, and the
// geometry in x-pixel units (z and y scaled by their spacing relative to x).
struct Canvas {
  explicit Canvas(const SynthOptions& o)
      : nz(o.shape[0]), ny(o.shape[1]), nx(o.shape[2]),
        sz(o.spacing[0] / o.spacing[2]), sy(o.spacing[1] / o.spacing[2]),
        planar(nz == 1), depth(planar ? 0 : nz * sz),
        grey(nz * ny * nx), label(nz * ny * nx, 0) {}
  int64_t at(int64_t z, int64_t y, int64_t x) const { return (z * ny + y) * nx + x; }
  // A random centre inside the volume.
  Vec3 Centre(Rng& rng) const { return {planar ? 0 : rng.U(0, depth), rng.U(0, ny * sy), rng.U(0, nx)}; }
  // The voxel index range [lo, hi] along an axis that `reach` around `c` covers.
  static std::pair<int64_t, int64_t> Span(double c, double reach, double scale, int64_t n) {
    return {std::max<int64_t>(0, static_cast<int64_t>((c - reach) / scale)),
            std::min<int64_t>(n - 1, static_cast<int64_t>((c + reach) / scale) + 1)};
  }
  const int64_t nz, ny, nx;
  const double sz, sy;
  const bool planar;
  const double depth;
  std::vector<float> grey;
  std::vector<uint8_t> label;
};

// Cells: Voronoi seeds in a box extended by half a cell on each side, a tone
// each, membranes along the bisectors. Returns the number of cells.
int DrawCells(const SynthOptions& o, Rng& rng, Canvas& cv) {
  const double r = o.cell_diameter / 2;
  const double cells_f = (cv.ny * cv.sy + 2 * r) * (cv.nx + 2 * r) / (o.cell_diameter * o.cell_diameter) *
                         std::max(1.0, (cv.depth + (cv.planar ? 0 : 2 * r)) / o.cell_diameter);
  const int cells = std::max(2, static_cast<int>(cells_f));
  std::vector<Vec3> seeds(cells);
  std::vector<float> tone(cells);
  for (int i = 0; i < cells; ++i) {
    seeds[i] = {cv.planar ? 0 : rng.U(-r, cv.depth + r), rng.U(-r, cv.ny * cv.sy + r), rng.U(-r, cv.nx + r)};
    tone[i] = static_cast<float>(rng.U(135, 175));
  }
  const double phase_a = rng.U(0, 2 * kPi), phase_b = rng.U(0, 2 * kPi);
  for (int64_t z = 0; z < cv.nz; ++z) {
    for (int64_t y = 0; y < cv.ny; ++y) {
      for (int64_t x = 0; x < cv.nx; ++x) {
        const Vec3 p{z * cv.sz, y * cv.sy, static_cast<double>(x)};
        double d1 = 1e30, d2 = 1e30;
        int best = 0, second = 0;
        for (int i = 0; i < cells; ++i) {
          const double dz = p.z - seeds[i].z, dy = p.y - seeds[i].y, dx = p.x - seeds[i].x;
          const double d = dz * dz + dy * dy + dx * dx;
          if (d < d1) {
            d2 = d1;
            second = best;
            d1 = d;
            best = i;
          } else if (d < d2) {
            d2 = d;
            second = i;
          }
        }
        // Exact distance to the bisector plane of the two nearest seeds:
        // (|p - s2|^2 - |p - s1|^2) / (2 |s2 - s1|); membranes ~2 x 1.5 px thick.
        const Vec3 s12{seeds[second].z - seeds[best].z, seeds[second].y - seeds[best].y, seeds[second].x - seeds[best].x};
        const double gap = (d2 - d1) / (2 * std::sqrt(std::max(1e-9, Dot(s12, s12))));
        const double texture = 8 * std::sin(p.x * 0.07 + phase_a) * std::sin(p.y * 0.05 + phase_b + p.z * 0.03);
        cv.grey[cv.at(z, y, x)] = static_cast<float>(gap < 1.5 ? 50 + 12 * gap : tone[best] + texture);
      }
    }
  }
  return cells;
}

// Mitochondria (label 1): ellipsoids with an outer membrane and cristae.
void DrawMitochondria(int count, Rng& rng, Canvas& cv) {
  for (int m = 0; m < count; ++m) {
    const Vec3 c = cv.Centre(rng);
    const double a = rng.U(14, 30), b = rng.U(7, 11), cc = cv.planar ? 1e9 : rng.U(7, 11);
    const auto axes = RandomAxes(rng, cv.planar);
    const double period = rng.U(5, 8);
    const double reach = a + 2;
    const auto [z0, z1] = cv.planar ? std::pair<int64_t, int64_t>{0, 0} : Canvas::Span(c.z, reach, cv.sz, cv.nz);
    const auto [y0, y1] = Canvas::Span(c.y, reach, cv.sy, cv.ny);
    const auto [x0, x1] = Canvas::Span(c.x, reach, 1.0, cv.nx);
    for (int64_t z = z0; z <= z1; ++z) {
      for (int64_t y = y0; y <= y1; ++y) {
        for (int64_t x = x0; x <= x1; ++x) {
          const Vec3 d{z * cv.sz - c.z, y * cv.sy - c.y, x - c.x};
          const double u = Dot(d, axes[0]), v = Dot(d, axes[1]), w = Dot(d, axes[2]);
          const double q = u * u / (a * a) + v * v / (b * b) + (cv.planar ? 0 : w * w / (cc * cc));
          if (q > 1) continue;
          float value;
          if (q > 0.72) value = 45;                                         // outer membrane
          else if (std::sin(2 * kPi * u / period) > 0.55) value = 150;      // cristae
          else value = 92;                                                  // matrix
          cv.grey[cv.at(z, y, x)] = value;
          cv.label[cv.at(z, y, x)] = 1;
        }
      }
    }
  }
}

// Vesicles (label 2 with 3 classes): small bright spheres outside mitochondria.
void DrawVesicles(int count, int classes, Rng& rng, Canvas& cv) {
  for (int k = 0; k < count; ++k) {
    const Vec3 c = cv.Centre(rng);
    const double rad = rng.U(3, 6);
    const auto [z0, z1] = cv.planar ? std::pair<int64_t, int64_t>{0, 0} : Canvas::Span(c.z, rad, cv.sz, cv.nz);
    const auto [y0, y1] = Canvas::Span(c.y, rad, cv.sy, cv.ny);
    const auto [x0, x1] = Canvas::Span(c.x, rad, 1.0, cv.nx);
    for (int64_t z = z0; z <= z1; ++z) {
      for (int64_t y = y0; y <= y1; ++y) {
        for (int64_t x = x0; x <= x1; ++x) {
          const double dz = z * cv.sz - c.z, dy = y * cv.sy - c.y, dx = x - c.x;
          const double d = std::sqrt(dz * dz + dy * dy + dx * dx);
          if (d > rad || cv.label[cv.at(z, y, x)] == 1) continue;
          cv.grey[cv.at(z, y, x)] = d > rad - 1.5 ? 60 : 185;
          if (classes >= 3) cv.label[cv.at(z, y, x)] = 2;
        }
      }
    }
  }
}

// In-plane Gaussian blur (separable, clamped borders).
void BlurInPlane(double sigma, Canvas& cv) {
  const int radius = static_cast<int>(std::ceil(3 * sigma));
  std::vector<float> k(2 * radius + 1);
  float sum = 0;
  for (int i = -radius; i <= radius; ++i) sum += k[i + radius] = std::exp(-i * i / (2 * sigma * sigma));
  for (float& v : k) v /= sum;
  std::vector<float> tmp(cv.grey.size());
  auto clampi = [](int64_t i, int64_t n) { return std::min<int64_t>(n - 1, std::max<int64_t>(0, i)); };
  for (int64_t z = 0; z < cv.nz; ++z)
    for (int64_t y = 0; y < cv.ny; ++y)
      for (int64_t x = 0; x < cv.nx; ++x) {
        float acc = 0;
        for (int i = -radius; i <= radius; ++i) acc += k[i + radius] * cv.grey[cv.at(z, y, clampi(x + i, cv.nx))];
        tmp[cv.at(z, y, x)] = acc;
      }
  for (int64_t z = 0; z < cv.nz; ++z)
    for (int64_t y = 0; y < cv.ny; ++y)
      for (int64_t x = 0; x < cv.nx; ++x) {
        float acc = 0;
        for (int i = -radius; i <= radius; ++i) acc += k[i + radius] * tmp[cv.at(z, clampi(y + i, cv.ny), x)];
        cv.grey[cv.at(z, y, x)] = acc;
      }
}

}  // namespace

SynthVolume Synthesize(const SynthOptions& o) {
  Rng rng(o.seed);
  Canvas cv(o);
  const int cells = DrawCells(o, rng, cv);  // the draws' order is the volume's identity: keep it
  DrawMitochondria(static_cast<int>(cells * o.mitochondria_per_cell), rng, cv);
  DrawVesicles(static_cast<int>(cells * o.vesicles_per_cell), o.classes, rng, cv);
  if (o.blur_sigma > 0) BlurInPlane(o.blur_sigma, cv);
  SynthVolume out;
  for (Volume* v : {&out.image, &out.mask}) {
    v->shape = o.shape;
    v->spacing = o.spacing;
    v->data.resize(cv.grey.size());
  }
  for (size_t i = 0; i < cv.grey.size(); ++i) {
    const double v = cv.grey[i] + o.noise_sigma * rng.Normal();
    out.image.data[i] = static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
  }
  out.mask.data = std::move(cv.label);
  return out;
}

}  // namespace retina::trainer
