// Seeded random index cases shared by the core tests: a point set, its spec and, for supplied
// factors, factors computed by the library with other settings; plus query ids and out-of-sample
// query points drawn the same way on every machine.
#ifndef RCKNN_TESTS_TESTING_INDEX_CASES_H_
#define RCKNN_TESTS_TESTING_INDEX_CASES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernel.h"
#include "core/knn_index.h"
#include "core/metric_space.h"

namespace rcknn::testing {

struct IndexCase {
  std::string name;
  core::Metric metric = core::Metric::kResidualCorrelation;
  core::KernelType kernel = core::KernelType::kRbf;
  double variance = 1.0;
  std::vector<double> lengthscales = {1.0};
  int d = 2;
  int64_t n = 500;
  int64_t m = 32;
  double scale = 1.0;       // of the coordinates
  double duplicates = 0.0;  // fraction of rows overwritten with copies of others
  double grid = 0.0;        // > 0: coordinates snapped to this grid (coincident points)
  bool factors_supplied = false;
  double base = 1.5;
  std::vector<int64_t> ks = {1, 10};
  uint64_t seed = 1;
};

// A residual-correlation case (one lengthscale) and a Euclidean one; other fields at defaults.
IndexCase ResidualCase(std::string name, core::KernelType kernel, double lengthscale, int d,
                       int64_t n, int64_t m);
IndexCase EuclideanCase(std::string name, int d, int64_t n);

// The spec: inducing points drawn with seed + 2 (min(m, n) of them), jitter 1e-4 on a grid
// (coincident inducing points need more).
core::IndexSpec CaseSpec(const IndexCase& c);
// n x d normal points (seed), with duplicates (seed + 1) and the grid applied.
core::RowMatrix CasePoints(const IndexCase& c);
// The points and, with factors_supplied, V and p computed by the library with jitter 1e-3 (other
// settings than the spec's, as a user's own factors would be). The same data on every call.
absl::StatusOr<core::IndexData> CaseData(const IndexCase& c);

// `count` query ids: the first, last and middle ids, random ones (seed), and one repeat.
std::vector<int64_t> CaseQueryIds(int64_t n, uint64_t seed, int64_t count);
// `count` out-of-sample points: normal ones times `scale` (seed), every fourth a copy of a stored
// point, and one far away.
core::RowMatrix CaseQueryPoints(const core::RowMatrix& stored, double scale, uint64_t seed,
                                int64_t count);

}  // namespace rcknn::testing

#endif  // RCKNN_TESTS_TESTING_INDEX_CASES_H_
