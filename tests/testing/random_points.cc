#include "tests/testing/random_points.h"

#include <cmath>

#include "core/random.h"

namespace rcknn::testing {

core::RowMatrix NormalPoints(int64_t n, int d, uint64_t seed, double scale) {
  core::SplitMix64 rng(seed);
  core::RowMatrix points(n, d);
  for (int64_t i = 0; i < n; ++i) {
    for (int t = 0; t < d; ++t) points(i, t) = scale * rng.Normal();
  }
  return points;
}

void AddDuplicates(core::RowMatrix& points, double fraction, uint64_t seed) {
  const int64_t n = points.rows();
  if (n < 2) return;
  core::SplitMix64 rng(seed);
  const int64_t copies = static_cast<int64_t>(std::llround(fraction * n));
  for (int64_t c = 0; c < copies; ++c) {
    const int64_t to = static_cast<int64_t>(rng.UniformBelow(n));
    const int64_t from = static_cast<int64_t>(rng.UniformBelow(n));
    points.row(to) = points.row(from);
  }
}

void SnapToGrid(core::RowMatrix& points, double step) {
  for (int64_t i = 0; i < points.rows(); ++i) {
    for (int64_t t = 0; t < points.cols(); ++t) {
      points(i, t) = step * std::round(points(i, t) / step);
    }
  }
}

}  // namespace rcknn::testing
