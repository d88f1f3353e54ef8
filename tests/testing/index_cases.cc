#include "tests/testing/index_cases.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "core/random.h"
#include "core/residual_correlation.h"
#include "tests/testing/random_points.h"

namespace rcknn::testing {

IndexCase ResidualCase(std::string name, core::KernelType kernel, double lengthscale, int d,
                       int64_t n, int64_t m) {
  IndexCase c;
  c.name = std::move(name);
  c.kernel = kernel;
  c.lengthscales = {lengthscale};
  c.d = d;
  c.n = n;
  c.m = m;
  return c;
}

IndexCase EuclideanCase(std::string name, int d, int64_t n) {
  IndexCase c;
  c.name = std::move(name);
  c.metric = core::Metric::kEuclidean;
  c.d = d;
  c.n = n;
  return c;
}

core::IndexSpec CaseSpec(const IndexCase& c) {
  core::IndexSpec spec;
  spec.metric = c.metric;
  spec.dimension = c.d;
  spec.residual.kernel.type = c.kernel;
  spec.residual.kernel.variance = c.variance;
  spec.residual.kernel.lengthscales = c.lengthscales;
  spec.residual.inducing_count = std::min(c.m, c.n);
  spec.residual.inducing_seed = c.seed + 2;
  if (c.grid > 0) spec.residual.jitter = 1e-4;
  spec.factors_supplied = c.factors_supplied;
  spec.tree.base = c.base;
  return spec;
}

core::RowMatrix CasePoints(const IndexCase& c) {
  core::RowMatrix points = NormalPoints(c.n, c.d, c.seed, c.scale);
  AddDuplicates(points, c.duplicates, c.seed + 1);
  if (c.grid > 0) SnapToGrid(points, c.grid);
  return points;
}

absl::StatusOr<core::IndexData> CaseData(const IndexCase& c) {
  core::IndexData data;
  data.points = CasePoints(c);
  if (c.factors_supplied) {
    core::ResidualOptions options = CaseSpec(c).residual;
    options.jitter = 1e-3;
    absl::StatusOr<std::unique_ptr<core::ResidualSpace>> computed =
        core::ResidualSpace::Create(data.points, options);
    if (!computed.ok()) return computed.status();
    data.factors = (*computed)->v();
    data.residual_variances = (*computed)->p();
  }
  return data;
}

std::vector<int64_t> CaseQueryIds(int64_t n, uint64_t seed, int64_t count) {
  std::vector<int64_t> ids = {0, n - 1, n / 2};
  core::SplitMix64 rng(seed);
  while (static_cast<int64_t>(ids.size()) < count) {
    ids.push_back(static_cast<int64_t>(rng.UniformBelow(n)));
  }
  ids.push_back(ids[3 % ids.size()]);  // a repeat
  return ids;
}

core::RowMatrix CaseQueryPoints(const core::RowMatrix& stored, double scale, uint64_t seed,
                                int64_t count) {
  const int64_t n = stored.rows();
  core::RowMatrix points = NormalPoints(count, static_cast<int>(stored.cols()), seed, scale);
  core::SplitMix64 rng(seed + 1);
  for (int64_t q = 0; q < count; q += 4) points.row(q) = stored.row(rng.UniformBelow(n));
  points.row(1) *= 10.0;
  return points;
}

}  // namespace rcknn::testing
