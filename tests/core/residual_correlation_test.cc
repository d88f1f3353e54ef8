// The residual correlation metric (docs/design.md section 2): factors against an independent Eigen
// computation, metric properties on random triples, agreement of every evaluation path,
// out-of-sample points, supplied factors, reproducibility and input validation.
#include "core/residual_correlation.h"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/cover_tree_range_search.h"
#include "core/random.h"
#include "core/search_rule.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/core/scan_oracle.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

using core::KernelSpec;
using core::KernelType;
using core::PointRows;
using core::ResidualOptions;
using core::ResidualSpace;
using core::RowMatrix;

constexpr KernelType kAllTypes[] = {KernelType::kRbf, KernelType::kMatern12, KernelType::kMatern32,
                                    KernelType::kMatern52};
constexpr double kInf = std::numeric_limits<double>::infinity();

// k(a, b) from the formulas of docs/design.md section 2, independent of core::Kernel.
double RefKernel(const KernelSpec& spec, const double* a, const double* b, int d) {
  double r2 = 0.0;
  for (int t = 0; t < d; ++t) {
    const double l = spec.lengthscales.size() == 1 ? spec.lengthscales[0] : spec.lengthscales[t];
    r2 += (a[t] - b[t]) * (a[t] - b[t]) / (l * l);
  }
  const double r = std::sqrt(r2);
  switch (spec.type) {
    case KernelType::kRbf:
      return spec.variance * std::exp(-r2 / 2.0);
    case KernelType::kMatern12:
      return spec.variance * std::exp(-r);
    case KernelType::kMatern32:
      return spec.variance * (1.0 + std::sqrt(3.0) * r) * std::exp(-std::sqrt(3.0) * r);
    case KernelType::kMatern52:
      return spec.variance * (1.0 + std::sqrt(5.0) * r + 5.0 * r2 / 3.0) *
             std::exp(-std::sqrt(5.0) * r);
  }
  return 0.0;
}

Eigen::MatrixXd RefGram(const KernelSpec& spec, const RowMatrix& a, const RowMatrix& b) {
  Eigen::MatrixXd k(a.rows(), b.rows());
  for (int64_t i = 0; i < a.rows(); ++i) {
    for (int64_t j = 0; j < b.rows(); ++j) {
      k(i, j) = RefKernel(spec, a.row(i).data(), b.row(j).data(), static_cast<int>(a.cols()));
    }
  }
  return k;
}

KernelSpec MakeKernel(KernelType type, double variance, std::vector<double> lengthscales) {
  KernelSpec spec;
  spec.type = type;
  spec.variance = variance;
  spec.lengthscales = std::move(lengthscales);
  return spec;
}

std::unique_ptr<ResidualSpace> MakeSpace(RowMatrix points, const ResidualOptions& options,
                                         tbb::task_arena* arena = nullptr) {
  absl::StatusOr<std::unique_ptr<ResidualSpace>> space =
      ResidualSpace::Create(std::move(points), options, arena);
  EXPECT_TRUE(space.ok()) << space.status();
  return space.ok() ? *std::move(space) : nullptr;
}

ResidualOptions Options(const KernelSpec& kernel, int64_t m, uint64_t seed = 0,
                        double jitter = core::kDefaultJitter) {
  ResidualOptions options;
  options.kernel = kernel;
  options.inducing_count = m;
  options.inducing_seed = seed;
  options.jitter = jitter;
  return options;
}

std::vector<int64_t> AllIds(int64_t n) {
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

// d(rows[row], stored id) through RowToIds.
double Dist(const ResidualSpace& space, const PointRows& rows, int64_t row, int64_t id) {
  double d;
  space.RowToIds(rows, row, absl::MakeConstSpan(&id, 1), &d);
  return d;
}

// ---------------------------------------------------------------------------------------------
// Factors V and p against K(X,U) (K(U,U) + jitter s2 I)^-1 K(U,X), solved independently.

struct FactorCase {
  KernelType type;
  int d;
  bool ard;
  bool explicit_inducing;
  double jitter;
};

TEST(ResidualFactorsTest, MatchIndependentComputation) {
  std::vector<FactorCase> cases;
  for (KernelType type : kAllTypes) {
    for (int d : {1, 2, 3, 5}) {
      cases.push_back({type, d, false, false, 1e-6});
      cases.push_back({type, d, true, false, 1e-3});
      cases.push_back({type, d, d > 1, true, 1e-6});
    }
  }
  core::SplitMix64 rng(2024);
  int index = 0;
  for (const FactorCase& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "case " << index << " kernel " << core::KernelTypeName(c.type) << " d=" << c.d
                 << " ard=" << c.ard << " explicit=" << c.explicit_inducing);
    const int64_t n = 60;
    const int64_t m = 12;
    std::vector<double> lengthscales;
    for (int t = 0; t < (c.ard ? c.d : 1); ++t) lengthscales.push_back(0.4 + rng.UniformDouble());
    const KernelSpec kernel = MakeKernel(c.type, 0.5 + 2.0 * rng.UniformDouble(), lengthscales);
    const RowMatrix points = testing::NormalPoints(n, c.d, 100 + index);
    ResidualOptions options = Options(kernel, m, index, c.jitter);
    if (c.explicit_inducing) options.inducing_points = testing::NormalPoints(m, c.d, 500 + index);
    std::unique_ptr<ResidualSpace> space = MakeSpace(points, options);
    ASSERT_NE(space, nullptr);
    ++index;

    RowMatrix inducing(m, c.d);
    if (c.explicit_inducing) {
      EXPECT_TRUE(space->inducing_ids().empty());
      inducing = *options.inducing_points;
    } else {
      const std::vector<int64_t>& ids = space->inducing_ids();
      ASSERT_EQ(static_cast<int64_t>(ids.size()), m);
      for (int64_t u = 0; u < m; ++u) {
        ASSERT_GE(ids[u], 0);
        ASSERT_LT(ids[u], n);
        if (u > 0) {
          ASSERT_LT(ids[u - 1], ids[u]);
        }
        inducing.row(u) = points.row(ids[u]);
      }
    }
    ASSERT_EQ(space->v().rows(), n);
    ASSERT_EQ(space->v().cols(), m);
    ASSERT_EQ(space->p().size(), n);
    EXPECT_FALSE(space->factors_supplied());
    EXPECT_EQ(space->size(), n);
    EXPECT_EQ(space->dimension(), c.d);

    const double s2 = kernel.variance;
    Eigen::MatrixXd kuu = RefGram(kernel, inducing, inducing);
    kuu.diagonal().array() += c.jitter * s2;
    const Eigen::MatrixXd kux = RefGram(kernel, inducing, points);
    const Eigen::MatrixXd q = kux.transpose() * kuu.ldlt().solve(kux);
    const Eigen::MatrixXd vvt = space->v() * space->v().transpose();
    EXPECT_LE((vvt - q).cwiseAbs().maxCoeff(), 1e-9 * s2);

    Eigen::VectorXd p_ref(n);
    for (int64_t i = 0; i < n; ++i) {
      p_ref[i] = std::max(s2 - q(i, i), core::kMinResidualVariance);
      // Exactly the stated rule on the space's own V ...
      EXPECT_EQ(space->p()[i],
                std::max(s2 - space->v().row(i).squaredNorm(), core::kMinResidualVariance));
      // ... and close to the independent value.
      EXPECT_NEAR(space->p()[i], p_ref[i], 1e-9 * s2) << "point " << i;
    }

    // Distances against the defining formula, compared as 1 - |rho| = d^2 (no sqrt to amplify
    // rounding near 0).
    const Eigen::MatrixXd kxx = RefGram(kernel, points, points);
    const PointRows rows = space->Gather(AllIds(n));
    std::vector<double> d(n);
    double worst = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      space->RowToIds(rows, i, AllIds(n), d.data());
      for (int64_t j = 0; j < n; ++j) {
        const double rho = (kxx(i, j) - q(i, j)) / std::sqrt(p_ref[i] * p_ref[j]);
        const double d2 = i == j ? 0.0 : 1.0 - std::min(std::abs(rho), 1.0);
        worst = std::max(worst, std::abs(d[j] * d[j] - d2));
      }
    }
    EXPECT_LE(worst, 1e-7) << "largest difference of d^2 from the defining formula";
  }
}

// With p floored, a point that coincides with an inducing point has p = the floor or about
// jitter * s2: the rule max(s2 - ||V||^2, 1e-9) must still hold.
TEST(ResidualFactorsTest, ResidualVarianceFloor) {
  const KernelSpec kernel = MakeKernel(KernelType::kRbf, 1.0, {3.0});
  RowMatrix points = testing::NormalPoints(50, 1, 3, 0.1);
  std::unique_ptr<ResidualSpace> space = MakeSpace(points, Options(kernel, 20, 1, 1e-10));
  ASSERT_NE(space, nullptr);
  for (int64_t i = 0; i < space->size(); ++i) {
    EXPECT_GE(space->p()[i], core::kMinResidualVariance);
    EXPECT_EQ(space->p()[i],
              std::max(1.0 - space->v().row(i).squaredNorm(), core::kMinResidualVariance));
  }
}

// ---------------------------------------------------------------------------------------------
// Metric properties on random triples.

struct MetricCase {
  std::string name;
  KernelSpec kernel;
  int d;
  int64_t n;
  int64_t m;
  double duplicates;
};

std::vector<MetricCase> MetricCases() {
  return {
      {"sparse_rbf", MakeKernel(KernelType::kRbf, 1.0, {0.3}), 3, 400, 16, 0.0},
      {"dense_rbf", MakeKernel(KernelType::kRbf, 1.0, {1.5}), 2, 400, 24, 0.05},
      {"matern12_ard", MakeKernel(KernelType::kMatern12, 2.0, {0.5, 1.0, 2.0}), 3, 400, 32, 0.0},
      {"matern32", MakeKernel(KernelType::kMatern32, 1.5, {0.5}), 2, 400, 32, 0.05},
      {"matern52_1d", MakeKernel(KernelType::kMatern52, 0.7, {0.8}), 1, 300, 16, 0.0},
      {"rbf_8d_ard", MakeKernel(KernelType::kRbf, 1.0, {1, 2, 3, 1, 2, 3, 1, 2}), 8, 400, 48, 0.0},
  };
}

// Bound on the rounding error of rho for points with residual variances >= p_min: one length-m
// dot product of vectors of norm <= sqrt(s2) and one kernel value, divided by p_min.
double RhoError(const ResidualSpace& space, double p_min) {
  const double m = static_cast<double>(space.v().cols());
  return (m + 16.0) * DBL_EPSILON * space.kernel().variance() / p_min;
}

struct TriangleCheck {
  int64_t violations = 0;  // triples beyond the rounding slack
  int64_t tight = 0;       // triples within 0.01 of equality
  double max_excess = -std::numeric_limits<double>::infinity();
  std::string first_violation;
};

// The triangle inequality d(i, k) <= d(i, j) + d(j, k) on 40,000 random triples of the n x n
// distance matrix `dist` of `space`'s points, half of them chosen among close points (where the
// inequality is tight). Slack: an error e in rho moves d = sqrt(1 - |rho|) by up to sqrt(e) near
// 0, so each of the three distances may be off by sqrt(e); we allow 3 sqrt(e) with e the bound of
// RhoError for the smallest p of the triple.
TriangleCheck CheckTriangles(const ResidualSpace& space, const RowMatrix& dist, uint64_t seed) {
  const int64_t n = dist.rows();
  std::vector<std::vector<int64_t>> near(n);
  for (int64_t i = 0; i < n; ++i) {
    near[i] = AllIds(n);
    std::partial_sort(near[i].begin(), near[i].begin() + 12, near[i].end(),
                      [&](int64_t a, int64_t b) { return dist(i, a) < dist(i, b); });
    near[i].resize(12);
  }
  core::SplitMix64 rng(seed);
  TriangleCheck result;
  for (int t = 0; t < 40000; ++t) {
    const int64_t i = static_cast<int64_t>(rng.UniformBelow(n));
    int64_t j, k;
    if (t % 2 == 0) {
      j = static_cast<int64_t>(rng.UniformBelow(n));
      k = static_cast<int64_t>(rng.UniformBelow(n));
    } else {
      // Two of the 12 nearest neighbours of i.
      j = near[i][rng.UniformBelow(12)];
      k = near[i][rng.UniformBelow(12)];
    }
    const double p_min = std::min({space.p()[i], space.p()[j], space.p()[k]});
    const double slack = 3.0 * std::sqrt(RhoError(space, p_min));
    const double excess = dist(i, k) - dist(i, j) - dist(j, k);
    result.max_excess = std::max(result.max_excess, excess);
    if (excess > -0.01) ++result.tight;
    if (excess > slack) {
      if (result.violations++ == 0) {
        result.first_violation = absl::StrCat("d(", i, ",", k, ") = ", dist(i, k), " > d(", i,
                                              ",", j, ") + d(", j, ",", k, ") = ", dist(i, j),
                                              " + ", dist(j, k));
      }
    }
  }
  return result;
}

TEST(ResidualMetricTest, PropertiesOnRandomTriples) {
  int seed = 0;
  for (const MetricCase& c : MetricCases()) {
    SCOPED_TRACE(c.name);
    RowMatrix points = testing::NormalPoints(c.n, c.d, 40 + seed);
    testing::AddDuplicates(points, c.duplicates, 90 + seed);
    std::unique_ptr<ResidualSpace> space = MakeSpace(points, Options(c.kernel, c.m, seed));
    ASSERT_NE(space, nullptr);
    ++seed;
    const int64_t n = c.n;
    const PointRows rows = space->Gather(AllIds(n));
    // The full distance matrix through RowToIds.
    RowMatrix dist(n, n);
    for (int64_t i = 0; i < n; ++i) space->RowToIds(rows, i, AllIds(n), dist.row(i).data());

    int64_t violations = 0;
    double worst_symmetry = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(dist(i, i), 0.0) << "d(i, i) for i = " << i;
      for (int64_t j = 0; j < n; ++j) {
        const double dij = dist(i, j);
        ASSERT_TRUE(dij >= 0.0 && dij <= 1.0) << "d(" << i << ", " << j << ") = " << dij;
        if (points.row(i) == points.row(j)) {
          ASSERT_EQ(dij, 0.0) << "exact duplicates " << i << " and " << j;
        }
        // Symmetry up to rounding of rho (the two orders multiply 1/sqrt(p) in turn).
        const double e = RhoError(*space, std::min(space->p()[i], space->p()[j]));
        worst_symmetry = std::max(worst_symmetry, std::abs(dij - dist(j, i)));
        if (std::abs(dij * dij - dist(j, i) * dist(j, i)) > e) ++violations;
      }
    }
    EXPECT_EQ(violations, 0) << "asymmetric pairs; largest |d(i,j) - d(j,i)| " << worst_symmetry;

    const TriangleCheck triangles = CheckTriangles(*space, dist, 7 + seed);
    EXPECT_EQ(triangles.violations, 0) << triangles.first_violation;
    // The check must have met nearly tight triples to mean anything.
    EXPECT_GT(triangles.tight, 100) << "largest excess " << triangles.max_excess;
  }
}

// The same check on a broken metric, 1 - |rho| (the squared distance, which is no metric), must
// report violations: the property test above is not vacuous.
TEST(ResidualMetricTest, TriangleCheckCatchesSquaredDistances) {
  const MetricCase c = MetricCases()[1];
  RowMatrix points = testing::NormalPoints(c.n, c.d, 41);
  std::unique_ptr<ResidualSpace> space = MakeSpace(points, Options(c.kernel, c.m, 1));
  ASSERT_NE(space, nullptr);
  const int64_t n = c.n;
  const PointRows rows = space->Gather(AllIds(n));
  RowMatrix dist(n, n);
  for (int64_t i = 0; i < n; ++i) space->RowToIds(rows, i, AllIds(n), dist.row(i).data());
  EXPECT_EQ(CheckTriangles(*space, dist, 8).violations, 0);
  const RowMatrix squared = dist.cwiseProduct(dist);
  const TriangleCheck broken = CheckTriangles(*space, squared, 8);
  EXPECT_GT(broken.violations, 100) << "largest excess " << broken.max_excess;
}

// ---------------------------------------------------------------------------------------------
// Every evaluation path gives the same distances.

void ExpectPathsAgree(const ResidualSpace& space, const PointRows& rows, double tol) {
  const int64_t n = space.size();
  const int64_t nr = rows.size();
  // Reference: RowToIds one id at a time.
  RowMatrix ref(nr, n);
  for (int64_t i = 0; i < nr; ++i) {
    for (int64_t j = 0; j < n; ++j) ref(i, j) = Dist(space, rows, i, j);
  }
  // RowToIds with all ids at once, in a shuffled order.
  std::vector<int64_t> shuffled = AllIds(n);
  core::SplitMix64 rng(5);
  for (int64_t j = n - 1; j > 0; --j) std::swap(shuffled[j], shuffled[rng.UniformBelow(j + 1)]);
  std::vector<double> out(n);
  for (int64_t i = 0; i < nr; ++i) {
    space.RowToIds(rows, i, shuffled, out.data());
    for (int64_t j = 0; j < n; ++j) {
      ASSERT_NEAR(out[j], ref(i, shuffled[j]), tol)
          << "RowToIds row " << i << " id " << shuffled[j];
    }
  }
  // RowsToRange in uneven blocks of rows and ids.
  for (int64_t first = 0; first < nr; first += 7) {
    const int64_t num = std::min<int64_t>(7, nr - first);
    for (int64_t begin = 0; begin < n; begin += 37) {
      const int64_t count = std::min<int64_t>(37 + begin % 3, n - begin);
      std::vector<double> block(num * count);
      space.RowsToRange(rows, first, num, begin, count, block.data());
      for (int64_t i = 0; i < num; ++i) {
        for (int64_t j = 0; j < count; ++j) {
          ASSERT_NEAR(block[i * count + j], ref(first + i, begin + j), tol)
              << "RowsToRange row " << first + i << " id " << begin + j;
        }
      }
    }
  }
  // RowsToRows against gathered stored rows.
  const PointRows stored = space.Gather(AllIds(n));
  for (int64_t first = 0; first < nr; first += 5) {
    const int64_t num = std::min<int64_t>(5, nr - first);
    for (int64_t b0 = 0; b0 < n; b0 += 50) {
      const int64_t nb = std::min<int64_t>(50, n - b0);
      std::vector<double> block(num * nb);
      space.RowsToRows(rows, first, num, stored, b0, nb, block.data());
      for (int64_t i = 0; i < num; ++i) {
        for (int64_t j = 0; j < nb; ++j) {
          ASSERT_NEAR(block[i * nb + j], ref(first + i, b0 + j), tol)
              << "RowsToRows row " << first + i << " id " << b0 + j;
        }
      }
      // And the other way round.
      std::vector<double> back(nb * num);
      space.RowsToRows(stored, b0, nb, rows, first, num, back.data());
      for (int64_t j = 0; j < nb; ++j) {
        for (int64_t i = 0; i < num; ++i) {
          ASSERT_NEAR(back[j * num + i], ref(first + i, b0 + j), tol)
              << "RowsToRows (swapped) row " << first + i << " id " << b0 + j;
        }
      }
    }
  }
}

TEST(ResidualPathsTest, AllEvaluationPathsAgree) {
  int seed = 0;
  for (KernelType type : kAllTypes) {
    for (int d : {1, 3, 6}) {
      SCOPED_TRACE(::testing::Message() << core::KernelTypeName(type) << " d=" << d);
      // Lengthscales short enough that the data are sparse relative to 20 inducing points.
      std::vector<double> lengthscales = {d == 1 ? 0.1 : 0.5};
      if (d == 6) lengthscales = {0.5, 1.0, 1.5, 0.7, 2.0, 1.2};
      // No duplicates here (see ExactDuplicatesAreAtDistanceZeroOnEveryPath): between
      // distinct random points, distances are far enough from 0 that rounding stays tiny.
      const RowMatrix points = testing::NormalPoints(300, d, 60 + seed);
      std::unique_ptr<ResidualSpace> space =
          MakeSpace(points, Options(MakeKernel(type, 1.3, lengthscales), 20, seed));
      ASSERT_NE(space, nullptr);
      ++seed;
      // Well conditioned: the smallest residual variances are those of the inducing points
      // themselves, about jitter * s2, far above the floor.
      ASSERT_GT(space->p().minCoeff(), 1e-7);
      std::vector<int64_t> ids;
      for (int64_t i = 0; i < 300; i += 11) ids.push_back(i);
      ExpectPathsAgree(*space, space->Gather(ids), 1e-9);
      const RowMatrix queries = testing::NormalPoints(23, d, 70 + seed);
      absl::StatusOr<PointRows> prepared = space->Prepare(queries.data(), queries.rows());
      ASSERT_TRUE(prepared.ok()) << prepared.status();
      ExpectPathsAgree(*space, *prepared, 1e-9);
    }
  }
}

// Exact duplicates are at distance exactly 0 on every path (residual_correlation.h: the same
// location with bit-identical factors), whatever their ids, wherever they fall in the blocks of
// the factor computation, and whatever m is. Without that, their distance is
// sqrt(rounding / p), up to 1e-5 when p is near jitter * s2, and differs between paths by more
// than the 1e-6 of docs/design.md section 3.
TEST(ResidualPathsTest, ExactDuplicatesAreAtDistanceZeroOnEveryPath) {
  for (KernelType type : kAllTypes) {
    for (int64_t m : {64, 20}) {
      SCOPED_TRACE(::testing::Message() << core::KernelTypeName(type) << " m=" << m);
      const int64_t n = 700;
      RowMatrix points = testing::NormalPoints(n, 1, 8);
      testing::AddDuplicates(points, 0.05, 9);
      const std::vector<std::pair<int64_t, int64_t>> pairs = {
          {0, 1}, {3, 300}, {5, 517}, {255, 256}, {256, 699}, {100, 101}, {2, 698}};
      for (const auto& [a, b] : pairs) points.row(b) = points.row(a);
      std::unique_ptr<ResidualSpace> space =
          MakeSpace(points, Options(MakeKernel(type, 1.0, {1.0}), m, 2));
      ASSERT_NE(space, nullptr);
      const PointRows all = space->Gather(AllIds(n));
      int64_t duplicate_pairs = 0, nonzero = 0, factors_differ = 0;
      double worst = 0.0;
      std::vector<double> by_ids(n), by_range(n), by_rows(n);
      for (int64_t a = 0; a < n; ++a) {
        space->RowToIds(all, a, AllIds(n), by_ids.data());
        space->RowsToRange(all, a, 1, 0, n, by_range.data());
        space->RowsToRows(all, a, 1, all, 0, n, by_rows.data());
        for (int64_t b = 0; b < n; ++b) {
          if (b == a || points.row(a) != points.row(b)) continue;
          ++duplicate_pairs;
          if (space->v().row(a) != space->v().row(b)) ++factors_differ;
          const double largest = std::max({by_ids[b], by_range[b], by_rows[b]});
          if (largest != 0.0) ++nonzero;
          worst = std::max(worst, largest);
        }
      }
      EXPECT_GT(duplicate_pairs, 50);
      EXPECT_EQ(factors_differ, 0) << "duplicate pairs whose rows of V differ";
      EXPECT_EQ(nonzero, 0) << "of " << duplicate_pairs
                            << " duplicate pairs are not at distance 0; largest " << worst;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Storage layout (MetricSpace::ApplyLayout).

std::vector<int64_t> Shuffled(int64_t n, uint64_t seed) {
  std::vector<int64_t> order = AllIds(n);
  core::SplitMix64 rng(seed);
  for (int64_t j = n - 1; j > 0; --j) std::swap(order[j], order[rng.UniformBelow(j + 1)]);
  return order;
}

// A space whose data are moved keeps its ids: every evaluation by id gives the same bits as an
// untouched copy, RowsToRange reads positions (the point at position p is id_at(p)), duplicates
// stay at distance 0, and the fingerprint does not move. Two layouts in a row compose.
TEST(ResidualLayoutTest, DistancesByIdDoNotDependOnTheLayout) {
  for (const MetricCase& c : MetricCases()) {
    SCOPED_TRACE(c.name);
    RowMatrix points = testing::NormalPoints(c.n, c.d, 31);
    testing::AddDuplicates(points, 0.05, 32);
    std::unique_ptr<ResidualSpace> plain = MakeSpace(points, Options(c.kernel, c.m, 3));
    std::unique_ptr<ResidualSpace> moved = MakeSpace(points, Options(c.kernel, c.m, 3));
    ASSERT_NE(plain, nullptr);
    ASSERT_NE(moved, nullptr);
    const uint64_t fingerprint = plain->Fingerprint();
    for (uint64_t seed : {41, 42}) {
      const std::vector<int64_t> order = Shuffled(c.n, seed);
      ASSERT_TRUE(moved->ApplyLayout(order).ok());
      ASSERT_TRUE(moved->has_layout());
      EXPECT_EQ(moved->Fingerprint(), fingerprint);
      for (int64_t p = 0; p < c.n; ++p) {
        ASSERT_EQ(moved->id_at(p), order[p]);
        ASSERT_EQ(moved->position_of(order[p]), p);
        ASSERT_EQ(moved->v().row(p), plain->v().row(order[p])) << "position " << p;
      }
      std::vector<int64_t> ids;
      for (int64_t i = 0; i < c.n; i += 7) ids.push_back(i);
      const PointRows a = plain->Gather(ids);
      const PointRows b = moved->Gather(ids);
      ASSERT_EQ(a.features, b.features);
      ASSERT_EQ(a.coords, b.coords);
      ASSERT_EQ(a.inv_sqrt_p, b.inv_sqrt_p);
      const std::vector<int64_t> all = Shuffled(c.n, seed + 100);
      std::vector<double> da(c.n), db(c.n), range(c.n);
      for (int64_t r = 0; r < a.size(); ++r) {
        plain->RowToIds(a, r, all, da.data());
        moved->RowToIds(b, r, all, db.data());
        for (int64_t j = 0; j < c.n; ++j) {
          ASSERT_EQ(std::memcmp(&da[j], &db[j], sizeof(double)), 0)
              << "RowToIds row " << r << " id " << all[j] << ": " << da[j] << " vs " << db[j];
        }
        // By position: the distance to id_at(p), within a matrix product's rounding.
        // (Without the layout's mapping these would be distances to other points.)
        moved->RowsToRange(b, r, 1, 0, c.n, range.data());
        plain->RowToIds(a, r, AllIds(c.n), da.data());
        for (int64_t p = 0; p < c.n; ++p) {
          const int64_t id = moved->id_at(p);
          ASSERT_NEAR(range[p], da[id], moved->RoundingBound(b, r))
              << "RowsToRange row " << r << " position " << p;
          if (da[id] == 0.0) {
            ASSERT_EQ(range[p], 0.0) << "duplicate at position " << p;
          }
        }
      }
    }
    // Back to the identity.
    ASSERT_TRUE(moved->ApplyLayout(AllIds(c.n)).ok());
    EXPECT_FALSE(moved->has_layout());
    EXPECT_EQ(moved->v(), plain->v());
    EXPECT_EQ(moved->Fingerprint(), fingerprint);
  }
}

// V computed straight into a layout (what a refitted index does) is V computed by id and moved
// there, bit for bit: the same rows, p, coordinates, distances and fingerprint. The last block
// is short with a column count that is not a multiple of the solve's panel width, which is where
// an unpadded solve rounds differently (n = 1001: a last block of 233 points).
TEST(ResidualLayoutTest, ComputedInALayoutIsTheSameAsMovedThere) {
  std::vector<MetricCase> cases = MetricCases();
  cases.push_back({"short_last_block", MakeKernel(KernelType::kRbf, 1.0, {0.4}), 2, 1001, 13, 0.02});
  cases.push_back({"one_short_block", MakeKernel(KernelType::kMatern32, 1.3, {0.6}), 2, 77, 40, 0.0});
  for (const MetricCase& c : cases) {
    SCOPED_TRACE(c.name);
    RowMatrix points = testing::NormalPoints(c.n, c.d, 51);
    testing::AddDuplicates(points, c.duplicates, 52);
    const ResidualOptions options = Options(c.kernel, c.m, 4);
    std::unique_ptr<ResidualSpace> plain = MakeSpace(points, options);
    std::unique_ptr<ResidualSpace> moved = MakeSpace(points, options);
    ASSERT_NE(plain, nullptr);
    ASSERT_NE(moved, nullptr);
    const std::vector<int64_t> order = Shuffled(c.n, 61);
    ASSERT_TRUE(moved->ApplyLayout(order).ok());
    absl::StatusOr<std::unique_ptr<ResidualSpace>> direct = ResidualSpace::Create(
        std::make_shared<const RowMatrix>(points), options, nullptr, nullptr, order);
    ASSERT_TRUE(direct.ok()) << direct.status();
    const ResidualSpace& laid = **direct;
    ASSERT_TRUE(laid.has_layout());
    int64_t rows_differing = 0;
    for (int64_t p = 0; p < c.n; ++p) {
      ASSERT_EQ(laid.id_at(p), order[p]);
      ASSERT_EQ(laid.position_of(order[p]), p);
      rows_differing += laid.v().row(p) != plain->v().row(order[p]);
    }
    EXPECT_EQ(rows_differing, 0) << "rows of V whose bits depend on where they were computed";
    EXPECT_TRUE(laid.v() == moved->v());
    EXPECT_TRUE(laid.p() == plain->p());
    EXPECT_EQ(laid.Fingerprint(), plain->Fingerprint());
    const std::vector<int64_t> ids = Shuffled(c.n, 62);
    const PointRows a = moved->Gather(ids);
    const PointRows b = laid.Gather(ids);
    ASSERT_EQ(a.features, b.features);
    ASSERT_EQ(a.coords, b.coords);
    ASSERT_EQ(a.inv_sqrt_p, b.inv_sqrt_p);
    std::vector<double> da(c.n), db(c.n);
    for (int64_t r = 0; r < a.size(); r += 5) {
      moved->RowToIds(a, r, ids, da.data());
      laid.RowToIds(b, r, ids, db.data());
      for (int64_t j = 0; j < c.n; ++j) {
        ASSERT_EQ(std::memcmp(&da[j], &db[j], sizeof(double)), 0) << "row " << r << " id " << ids[j];
      }
      moved->RowsToRange(a, r, 1, 0, c.n, da.data());
      laid.RowsToRange(b, r, 1, 0, c.n, db.data());
      for (int64_t p = 0; p < c.n; ++p) {
        ASSERT_EQ(std::memcmp(&da[p], &db[p], sizeof(double)), 0) << "row " << r << " position " << p;
      }
    }
    // Moving it to the layout it has moves nothing; to the identity, back to plain's arrays.
    std::unique_ptr<ResidualSpace> again = *std::move(direct);
    ASSERT_TRUE(again->ApplyLayout(order).ok());
    EXPECT_TRUE(again->v() == moved->v());
    ASSERT_TRUE(again->ApplyLayout(AllIds(c.n)).ok());
    EXPECT_FALSE(again->has_layout());
    EXPECT_TRUE(again->v() == plain->v());
    EXPECT_EQ(again->Fingerprint(), plain->Fingerprint());
  }
}

TEST(ResidualLayoutTest, CreateRejectsALayoutThatIsNotAPermutation) {
  const RowMatrix points = testing::NormalPoints(20, 2, 1);
  const ResidualOptions options = Options(MakeKernel(KernelType::kRbf, 1.0, {1.0}), 5);
  std::vector<int64_t> order = AllIds(20);
  order[3] = 4;
  for (const std::vector<int64_t>& bad : {order, AllIds(19), std::vector<int64_t>(20, 25)}) {
    absl::StatusOr<std::unique_ptr<ResidualSpace>> space = ResidualSpace::Create(
        std::make_shared<const RowMatrix>(points), options, nullptr, nullptr, bad);
    EXPECT_EQ(space.status().code(), absl::StatusCode::kInvalidArgument) << space.status();
  }
}

TEST(ResidualLayoutTest, RejectsWhatIsNotAPermutation) {
  std::unique_ptr<ResidualSpace> space =
      MakeSpace(testing::NormalPoints(20, 2, 1), Options(MakeKernel(KernelType::kRbf, 1.0, {1.0}), 5));
  ASSERT_NE(space, nullptr);
  std::vector<int64_t> order = AllIds(20);
  order[3] = 4;
  EXPECT_EQ(space->ApplyLayout(order).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(space->ApplyLayout(AllIds(19)).code(), absl::StatusCode::kInvalidArgument);
  order[3] = 20;
  EXPECT_EQ(space->ApplyLayout(order).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(space->has_layout());
}

// ---------------------------------------------------------------------------------------------
// Out-of-sample points.

TEST(ResidualOutOfSampleTest, StoredCoordinatesMatchQueryById) {
  int seed = 0;
  for (const MetricCase& c : MetricCases()) {
    SCOPED_TRACE(c.name);
    RowMatrix points = testing::NormalPoints(c.n, c.d, 140 + seed);
    std::unique_ptr<ResidualSpace> space = MakeSpace(points, Options(c.kernel, c.m, seed));
    ASSERT_NE(space, nullptr);
    ++seed;
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < c.n; i += 13) ids.push_back(i);
    // Include inducing points, whose residual variance is the smallest.
    for (int64_t u = 0; u < 5; ++u) ids.push_back(space->inducing_ids()[u]);
    RowMatrix coords(static_cast<int64_t>(ids.size()), c.d);
    for (size_t q = 0; q < ids.size(); ++q) coords.row(q) = points.row(ids[q]);
    absl::StatusOr<PointRows> prepared = space->Prepare(coords.data(), coords.rows());
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    ASSERT_EQ(prepared->size(), static_cast<int64_t>(ids.size()));
    const PointRows by_id = space->Gather(ids);
    std::vector<double> a(c.n), b(c.n);
    for (size_t q = 0; q < ids.size(); ++q) {
      EXPECT_EQ(prepared->ids[q], -1);
      EXPECT_NEAR((prepared->features.row(q) - space->v().row(ids[q])).cwiseAbs().maxCoeff(), 0.0,
                  1e-12);
      space->RowToIds(*prepared, q, AllIds(c.n), a.data());
      space->RowToIds(by_id, q, AllIds(c.n), b.data());
      const double p = space->p()[ids[q]];
      for (int64_t j = 0; j < c.n; ++j) {
        // d^2 agrees to the rounding of rho; the point itself (and its duplicates) sits at 0.
        const double e = RhoError(*space, std::min(p, space->p()[j]));
        ASSERT_NEAR(a[j] * a[j], b[j] * b[j], e)
            << "query id " << ids[q] << " to " << j << ": " << a[j] << " vs " << b[j];
        if (std::sqrt(e) < 1e-6) {
          ASSERT_NEAR(a[j], b[j], 1e-6) << "query id " << ids[q] << " to " << j;
        }
      }
      EXPECT_EQ(b[ids[q]], 0.0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reproducibility.

TEST(ResidualReproducibilityTest, SeededInducingChoice) {
  const KernelSpec kernel = MakeKernel(KernelType::kMatern32, 1.0, {0.5});
  const RowMatrix points = testing::NormalPoints(1000, 2, 11);
  std::unique_ptr<ResidualSpace> a = MakeSpace(points, Options(kernel, 50, 7));
  std::unique_ptr<ResidualSpace> b = MakeSpace(points, Options(kernel, 50, 7));
  std::unique_ptr<ResidualSpace> c = MakeSpace(points, Options(kernel, 50, 8));
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->inducing_ids(), b->inducing_ids());
  EXPECT_NE(a->inducing_ids(), c->inducing_ids());
  EXPECT_EQ(a->inducing_ids(), core::SampleDistinct(1000, 50, 7));
  EXPECT_TRUE(a->v() == b->v());
  EXPECT_TRUE(a->p() == b->p());
}

TEST(ResidualReproducibilityTest, FactorsIndependentOfThreadCount) {
  const KernelSpec kernel = MakeKernel(KernelType::kRbf, 1.0, {0.6, 0.9, 1.2});
  const RowMatrix points = testing::NormalPoints(1500, 3, 12);
  tbb::task_arena one(1), two(2);
  std::unique_ptr<ResidualSpace> a = MakeSpace(points, Options(kernel, 64, 1), &one);
  std::unique_ptr<ResidualSpace> b = MakeSpace(points, Options(kernel, 64, 1), &two);
  std::unique_ptr<ResidualSpace> c = MakeSpace(points, Options(kernel, 64, 1));
  ASSERT_TRUE(a && b && c);
  EXPECT_TRUE(a->v() == b->v());
  EXPECT_TRUE(a->p() == b->p());
  EXPECT_TRUE(a->v() == c->v());
}

// V itself (not only V V^T) against a straightforward computation: one point at a time, K(U, x)
// from the defining formula and a triangular solve of one vector against the Cholesky factor of
// the reference K(U, U). Several blocks of points, the last one partial, computed in parallel;
// the bits must not depend on the thread count.
TEST(ResidualFactorsTest, BlockedFactorsMatchPointByPointSolve) {
  for (KernelType type : {KernelType::kRbf, KernelType::kMatern32}) {
    SCOPED_TRACE(core::KernelTypeName(type));
    const KernelSpec kernel = MakeKernel(type, 1.7, {0.7, 1.1});
    const int64_t n = 1100;
    const int64_t m = 40;
    const RowMatrix points = testing::NormalPoints(n, 2, 31);
    tbb::task_arena one(1), two(2);
    std::unique_ptr<ResidualSpace> a = MakeSpace(points, Options(kernel, m, 5), &one);
    std::unique_ptr<ResidualSpace> b = MakeSpace(points, Options(kernel, m, 5), &two);
    ASSERT_TRUE(a && b);
    EXPECT_TRUE(a->v() == b->v()) << "V depends on the thread count";
    EXPECT_TRUE(a->p() == b->p()) << "p depends on the thread count";

    RowMatrix inducing(m, 2);
    for (int64_t u = 0; u < m; ++u) inducing.row(u) = points.row(a->inducing_ids()[u]);
    Eigen::MatrixXd kuu = RefGram(kernel, inducing, inducing);
    kuu.diagonal().array() += core::kDefaultJitter * kernel.variance;
    const Eigen::LLT<Eigen::MatrixXd> llt(kuu);
    ASSERT_EQ(llt.info(), Eigen::Success);
    double worst_v = 0.0, worst_p = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      Eigen::VectorXd kux(m);
      for (int64_t u = 0; u < m; ++u) {
        kux[u] = RefKernel(kernel, inducing.row(u).data(), points.row(i).data(), 2);
      }
      llt.matrixL().solveInPlace(kux);
      worst_v = std::max(worst_v, (a->v().row(i).transpose() - kux).cwiseAbs().maxCoeff());
      const double p = std::max(kernel.variance - kux.squaredNorm(), core::kMinResidualVariance);
      worst_p = std::max(worst_p, std::abs(a->p()[i] - p));
    }
    // Rounding only: the factors of K(U, U) + jitter are conditioned to about 1e3 here.
    EXPECT_LE(worst_v, 1e-9 * kernel.variance);
    EXPECT_LE(worst_p, 1e-9 * kernel.variance);
  }
}

TEST(ResidualReproducibilityTest, ProgressReachesOne) {
  const KernelSpec kernel = MakeKernel(KernelType::kRbf, 1.0, {1.0});
  std::vector<double> seen;
  tbb::task_arena one(1);
  absl::StatusOr<std::unique_ptr<ResidualSpace>> space =
      ResidualSpace::Create(testing::NormalPoints(1000, 2, 1), Options(kernel, 16), &one,
                            [&](double f) { seen.push_back(f); });
  ASSERT_TRUE(space.ok()) << space.status();
  ASSERT_FALSE(seen.empty());
  for (double f : seen) {
    EXPECT_GE(f, 0.0);
    EXPECT_LE(f, 1.0);
  }
  EXPECT_EQ(*std::max_element(seen.begin(), seen.end()), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Supplied factors.

TEST(ResidualFromFactorsTest, OwnFactorsGiveTheSameDistances) {
  for (const MetricCase& c : MetricCases()) {
    SCOPED_TRACE(c.name);
    RowMatrix points = testing::NormalPoints(c.n, c.d, 200);
    testing::AddDuplicates(points, 0.05, 201);
    std::unique_ptr<ResidualSpace> computed = MakeSpace(points, Options(c.kernel, c.m, 3));
    ASSERT_NE(computed, nullptr);
    absl::StatusOr<std::unique_ptr<ResidualSpace>> supplied =
        ResidualSpace::FromFactors(points, c.kernel, computed->v(), computed->p());
    ASSERT_TRUE(supplied.ok()) << supplied.status();
    EXPECT_TRUE((*supplied)->factors_supplied());
    EXPECT_TRUE((*supplied)->inducing_ids().empty());
    EXPECT_EQ((*supplied)->size(), c.n);
    const std::vector<int64_t> ids = AllIds(c.n);
    const PointRows rc = computed->Gather(ids);
    const PointRows rs = (*supplied)->Gather(ids);
    std::vector<double> a(c.n), b(c.n), ra(c.n), rb(c.n);
    for (int64_t i = 0; i < c.n; i += 3) {
      computed->RowToIds(rc, i, ids, a.data());
      (*supplied)->RowToIds(rs, i, ids, b.data());
      computed->RowsToRange(rc, i, 1, 0, c.n, ra.data());
      (*supplied)->RowsToRange(rs, i, 1, 0, c.n, rb.data());
      for (int64_t j = 0; j < c.n; ++j) {
        ASSERT_NEAR(a[j], b[j], 1e-12) << i << " " << j;
        ASSERT_NEAR(ra[j], rb[j], 1e-12) << i << " " << j;
      }
    }
    // No inducing points, so no out-of-sample queries.
    absl::StatusOr<PointRows> prepared = (*supplied)->Prepare(points.data(), 1);
    EXPECT_EQ(prepared.status().code(), absl::StatusCode::kFailedPrecondition) << prepared.status();
  }
}

TEST(ResidualFromFactorsTest, ArbitraryFactorsFollowTheFormula) {
  // V and p need not come from a kernel: d follows the formula with the supplied values.
  const int64_t n = 40;
  const KernelSpec kernel = MakeKernel(KernelType::kMatern52, 2.0, {1.0, 0.5});
  const RowMatrix points = testing::NormalPoints(n, 2, 300);
  RowMatrix v = testing::NormalPoints(n, 3, 301, 0.3);
  Eigen::VectorXd p(n);
  core::SplitMix64 rng(302);
  for (int64_t i = 0; i < n; ++i) p[i] = 0.5 + rng.UniformDouble();
  absl::StatusOr<std::unique_ptr<ResidualSpace>> space =
      ResidualSpace::FromFactors(points, kernel, v, p);
  ASSERT_TRUE(space.ok()) << space.status();
  const PointRows rows = (*space)->Gather(AllIds(n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const double k = RefKernel(kernel, points.row(i).data(), points.row(j).data(), 2);
      const double rho = (k - v.row(i).dot(v.row(j))) / std::sqrt(p[i] * p[j]);
      const double expected = i == j ? 0.0 : std::sqrt(1.0 - std::min(std::abs(rho), 1.0));
      ASSERT_NEAR(Dist(**space, rows, i, j), expected, 1e-12) << i << " " << j;
    }
  }
}

// Supplied factors far from the kernel's scale: |V_i|^2 ~ 1e8 * variance (the kernel itself is
// variance 1). V = [V0, A I] Q with V0 and p computed for the kernel, A = 1e4 and Q a random
// rotation: for i != j, V_i . V_j = V0_i . V0_j, so the distances are the computed space's in exact
// arithmetic, but every dot product now sums terms of size A^2 / m that cancel, and rounds at
// that scale. A bound that assumes |V_i|^2 <= variance (true of computed factors) is then far
// too small.
struct HugeFactors {
  RowMatrix points;
  KernelSpec kernel;
  RowMatrix v;
  Eigen::VectorXd p;
};

HugeFactors MakeHugeFactors(int64_t n, int dimension = 2) {
  HugeFactors f;
  f.points = testing::NormalPoints(n, dimension, 900);
  f.kernel = MakeKernel(KernelType::kRbf, 1.0, {0.5});
  std::unique_ptr<ResidualSpace> computed = MakeSpace(f.points, Options(f.kernel, 24, 901));
  const int64_t m0 = computed->v().cols();
  const int64_t m = m0 + n;
  RowMatrix wide = RowMatrix::Zero(n, m);
  wide.leftCols(m0) = computed->v();
  for (int64_t i = 0; i < n; ++i) wide(i, m0 + i) = 1e4;
  const Eigen::MatrixXd gaussian = testing::NormalPoints(m, static_cast<int>(m), 902);
  const Eigen::MatrixXd q = Eigen::HouseholderQR<Eigen::MatrixXd>(gaussian).householderQ();
  f.v = wide * q;
  f.p = computed->p();
  return f;
}

TEST(ResidualFromFactorsTest, RoundingBoundHoldsForFactorsFarAboveTheKernelVariance) {
  const int64_t n = 300;
  const HugeFactors f = MakeHugeFactors(n);
  ASSERT_GT(f.v.rowwise().squaredNorm().minCoeff(), 1e7 * f.kernel.variance);
  absl::StatusOr<std::unique_ptr<ResidualSpace>> made =
      ResidualSpace::FromFactors(f.points, f.kernel, f.v, f.p);
  ASSERT_TRUE(made.ok()) << made.status();
  const ResidualSpace& space = **made;
  const std::vector<int64_t> ids = AllIds(n);
  const PointRows rows = space.Gather(ids);
  // Every non-canonical path (the matrix products of RowsToRange and RowsToRows) against the
  // canonical RowToIds, for every pair.
  std::vector<double> canonical(n), range(n), product(n * n);
  space.RowsToRows(rows, 0, n, rows, 0, n, product.data());
  double worst = 0.0;  // the largest |difference| / bound seen
  for (int64_t i = 0; i < n; ++i) {
    space.RowToIds(rows, i, ids, canonical.data());
    space.RowsToRange(rows, i, 1, 0, n, range.data());
    const double bound = space.RoundingBound(rows, i);
    for (int64_t j = 0; j < n; ++j) {
      worst = std::max(worst, std::abs(range[j] - canonical[j]) / bound);
      worst = std::max(worst, std::abs(product[i * n + j] - canonical[j]) / bound);
    }
  }
  EXPECT_LE(worst, 1.0) << "a product evaluation sits " << worst
                        << " rounding bounds from the canonical one";
}

core::IndexSpec HugeFactorsSpec(const HugeFactors& f, core::SearchStrategy strategy) {
  core::IndexSpec spec;
  spec.dimension = static_cast<int>(f.points.cols());
  spec.residual.kernel = f.kernel;
  spec.factors_supplied = true;
  spec.search.strategy = strategy;
  spec.search.block.min_block_queries = 4;
  return spec;
}

core::IndexData HugeFactorsData(const HugeFactors& f) {
  core::IndexData data;
  data.points = f.points;
  data.factors = f.v;
  data.residual_variances = f.p;
  return data;
}

// Every id of `index` as a query, against the canonical oracle on `dist` (all pairs, by id), bit
// for bit.
void ExpectAllIdsMatchOracle(const core::KnnIndex& index, const RowMatrix& dist,
                             const core::KnnOptions& options) {
  const int64_t n = index.size();
  const std::vector<int64_t> ids = AllIds(n);
  core::QueryBatch batch;
  batch.ids = ids;
  std::vector<int64_t> got_ids(n * options.k);
  std::vector<double> got(n * options.k);
  const absl::Status status =
      index.Search(batch, options, nullptr, nullptr, got_ids.data(), got.data());
  ASSERT_TRUE(status.ok()) << status;
  std::vector<int64_t> want_ids(options.k);
  std::vector<double> want(options.k);
  for (int64_t q = 0; q < n; ++q) {
    testing::NaiveKnn(dist, q, q, options, 0, want_ids.data(), want.data());
    for (int64_t r = 0; r < options.k; ++r) {
      ASSERT_EQ(got_ids[q * options.k + r], want_ids[r]) << "query " << q << " rank " << r;
      ASSERT_EQ(got[q * options.k + r], want[r]) << "query " << q << " rank " << r;
    }
  }
}

// The same factors through an index: every strategy (the walks with their root products, the
// block traversal, the scan) against the canonical oracle, bit for bit.
TEST(ResidualFromFactorsTest, SearchIsExactWithFactorsFarAboveTheKernelVariance) {
  const int64_t n = 300;
  const HugeFactors f = MakeHugeFactors(n);
  RowMatrix dist;
  for (core::SearchStrategy strategy :
       {core::SearchStrategy::kWalk, core::SearchStrategy::kBlocks, core::SearchStrategy::kScan}) {
    absl::StatusOr<std::unique_ptr<core::KnnIndex>> index =
        core::KnnIndex::Build(HugeFactorsSpec(f, strategy), HugeFactorsData(f));
    ASSERT_TRUE(index.ok()) << index.status();
    // The canonical distances depend on the pair alone, not on the layout: measured once.
    if (dist.size() == 0) {
      dist = testing::AllDistances((*index)->space(), (*index)->space().Gather(AllIds(n)));
    }
    for (bool predecessor : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "strategy " << static_cast<int>(strategy)
                                        << (predecessor ? " predecessor" : ""));
      core::KnnOptions options;
      options.k = 10;
      options.predecessor_mode = predecessor;
      ExpectAllIdsMatchOracle(**index, dist, options);
    }
  }
}

// Where the pruning needs more than kPruneSlack: the same factors over points on a line, where
// the triangle inequality is nearly tight and so are the trees' lower bounds, which then come
// within the rounding of the distances they bound. That rounding is far above kPruneSlack here:
// a max_dist the build measured by matrix products undershoots the canonical distance to one of
// its descendants (checked below), and so do the query's own evaluations. With kPruneSlack
// alone (core::PruneSlack returning it) the walk missed true neighbours for dozens of queries in
// both modes, the block traversal for a few, and the range search hundreds of points in range.
TEST(ResidualFromFactorsTest, PruningIsExactWhereTheTreeBoundsUndershootByMoreThanTheSlack) {
  const int64_t n = 400;
  const HugeFactors f = MakeHugeFactors(n, 1);
  RowMatrix dist;
  for (core::SearchStrategy strategy :
       {core::SearchStrategy::kAuto, core::SearchStrategy::kWalk, core::SearchStrategy::kBlocks,
        core::SearchStrategy::kScan}) {
    absl::StatusOr<std::unique_ptr<core::KnnIndex>> index =
        core::KnnIndex::Build(HugeFactorsSpec(f, strategy), HugeFactorsData(f));
    ASSERT_TRUE(index.ok()) << index.status();
    const core::MetricSpace& space = (*index)->space();
    const core::CoverTree& tree = (*index)->tree();
    if (dist.size() == 0) {
      dist = testing::AllDistances(space, space.Gather(AllIds(n)));
      // The stored bounds really are short of the canonical distances by more than the fixed
      // slack, and the space says its rounding is beyond the natural scale.
      double undershoot = 0.0;
      for (int64_t node = 1; node < n; ++node) {
        for (int64_t a = tree.parent(node); a >= 0; a = tree.parent(a)) {
          undershoot =
              std::max(undershoot, dist(tree.point(node), tree.point(a)) - tree.max_dist(a));
        }
      }
      EXPECT_GT(undershoot, 10.0 * core::kPruneSlack);
      EXPECT_GT(core::PruneSlack(space), core::kPruneSlack + undershoot);
      // The range search (maximin orderings) finds every point within its radius.
      core::RangeSearchScratch scratch;
      int64_t missed = 0;
      for (int64_t q = 0; q < n; ++q) {
        const PointRows rows = space.Gather(absl::MakeConstSpan(&q, 1));
        for (double radius : {0.05, 0.2}) {
          std::vector<char> found(n, 0);
          core::CoverTreeRangeSearch(
              tree, space, rows, 0, [&](int64_t) { return radius; },
              [&](int64_t id, double) { found[id] = 1; }, scratch);
          for (int64_t j = 0; j < n; ++j) missed += !found[j] && dist(q, j) <= radius;
        }
      }
      EXPECT_EQ(missed, 0) << "points within the radius that the range search missed";
    }
    for (bool predecessor : {false, true}) {
      for (int64_t k : {1, 10}) {
        SCOPED_TRACE(::testing::Message() << "strategy " << static_cast<int>(strategy) << " k "
                                          << k << (predecessor ? " predecessor" : ""));
        core::KnnOptions options;
        options.k = k;
        options.predecessor_mode = predecessor;
        ExpectAllIdsMatchOracle(**index, dist, options);
      }
    }
  }
}

// For computed factors (|V_i|^2 = variance - p_i, jitter > 0) the pruning slack is kPruneSlack
// bit for bit, down to the densest regime where p sits at the jitter level: every tree search
// prunes exactly as it did before PruneSlack existed. Supplied factors that are the computed
// ones add nothing either.
TEST(ResidualFromFactorsTest, ComputedFactorsLeaveThePruningSlackAsItWas) {
  for (KernelType type : kAllTypes) {
    for (int d : {1, 2, 3}) {
      for (int64_t m : {8, 64, 400}) {
        SCOPED_TRACE(::testing::Message()
                     << core::KernelTypeName(type) << " d " << d << " m " << m);
        const RowMatrix points = testing::NormalPoints(400, d, 910 + d);
        const KernelSpec kernel = MakeKernel(type, 1.7, {0.3 + 0.4 * d});
        std::unique_ptr<ResidualSpace> space = MakeSpace(points, Options(kernel, m, 911));
        ASSERT_NE(space, nullptr);
        EXPECT_EQ(space->RoundingExcess(), 0.0);
        EXPECT_EQ(core::PruneSlack(*space), core::kPruneSlack);
        absl::StatusOr<std::unique_ptr<ResidualSpace>> supplied =
            ResidualSpace::FromFactors(points, kernel, space->v(), space->p());
        ASSERT_TRUE(supplied.ok()) << supplied.status();
        EXPECT_EQ(core::PruneSlack(**supplied), core::kPruneSlack);
      }
    }
  }
  // And the space of the factors above, for contrast.
  const HugeFactors f = MakeHugeFactors(50);
  absl::StatusOr<std::unique_ptr<ResidualSpace>> huge =
      ResidualSpace::FromFactors(f.points, f.kernel, f.v, f.p);
  ASSERT_TRUE(huge.ok()) << huge.status();
  EXPECT_GT(core::PruneSlack(**huge), core::kPruneSlack);
}

// ---------------------------------------------------------------------------------------------
// Validation.

void ExpectStatus(const absl::Status& status, absl::StatusCode code, const std::string& field) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_NE(status.message().find(field), std::string::npos)
      << "message does not name " << field << ": " << status;
}

absl::Status CreateStatus(RowMatrix points, const ResidualOptions& options) {
  return ResidualSpace::Create(std::move(points), options).status();
}

TEST(ResidualValidationTest, RejectsNonFiniteCoordinates) {
  const ResidualOptions options = Options(MakeKernel(KernelType::kRbf, 1.0, {1.0}), 4);
  for (double bad : {std::nan(""), kInf, -kInf}) {
    RowMatrix points = testing::NormalPoints(10, 2, 1);
    points(7, 1) = bad;
    ExpectStatus(CreateStatus(points, options), absl::StatusCode::kInvalidArgument, "points");
  }
  ExpectStatus(CreateStatus(RowMatrix(0, 2), options), absl::StatusCode::kInvalidArgument,
               "points");
}

TEST(ResidualValidationTest, RejectsBadInducingCount) {
  const RowMatrix points = testing::NormalPoints(10, 2, 1);
  for (int64_t m : {int64_t{0}, int64_t{-3}, int64_t{11}, int64_t{1000}}) {
    ExpectStatus(CreateStatus(points, Options(MakeKernel(KernelType::kRbf, 1.0, {1.0}), m)),
                 absl::StatusCode::kInvalidArgument, "inducing_count");
  }
  // m = n and m = 1 are fine.
  EXPECT_TRUE(CreateStatus(points, Options(MakeKernel(KernelType::kRbf, 1.0, {1.0}), 10)).ok());
  EXPECT_TRUE(CreateStatus(points, Options(MakeKernel(KernelType::kRbf, 1.0, {1.0}), 1)).ok());
}

TEST(ResidualValidationTest, RejectsBadInducingPoints) {
  const RowMatrix points = testing::NormalPoints(10, 2, 1);
  ResidualOptions options = Options(MakeKernel(KernelType::kRbf, 1.0, {1.0}), 4);
  options.inducing_points = testing::NormalPoints(4, 3, 2);  // wrong dimension
  ExpectStatus(CreateStatus(points, options), absl::StatusCode::kInvalidArgument,
               "inducing_points");
  options.inducing_points = RowMatrix(0, 2);
  ExpectStatus(CreateStatus(points, options), absl::StatusCode::kInvalidArgument,
               "inducing_points");
  options.inducing_points = testing::NormalPoints(4, 2, 2);
  (*options.inducing_points)(2, 0) = std::nan("");
  ExpectStatus(CreateStatus(points, options), absl::StatusCode::kInvalidArgument,
               "inducing_points");
  (*options.inducing_points)(2, 0) = kInf;
  ExpectStatus(CreateStatus(points, options), absl::StatusCode::kInvalidArgument,
               "inducing_points");
}

TEST(ResidualValidationTest, RejectsBadJitterAndKernel) {
  const RowMatrix points = testing::NormalPoints(10, 2, 1);
  for (double jitter : {-1e-6, -1.0, std::nan(""), kInf}) {
    ExpectStatus(
        CreateStatus(points, Options(MakeKernel(KernelType::kRbf, 1.0, {1.0}), 4, 0, jitter)),
        absl::StatusCode::kInvalidArgument, "jitter");
  }
  ExpectStatus(CreateStatus(points, Options(MakeKernel(KernelType::kRbf, 0.0, {1.0}), 4)),
               absl::StatusCode::kInvalidArgument, "variance");
  ExpectStatus(CreateStatus(points, Options(MakeKernel(KernelType::kRbf, 1.0, {1.0, 2.0, 3.0}), 4)),
               absl::StatusCode::kInvalidArgument, "lengthscales");
}

// Two identical explicit inducing points without jitter make K(U, U) singular. With s2 a power
// of 4 the Cholesky pivot s2 - (s2 / sqrt(s2))^2 is exactly 0.
TEST(ResidualValidationTest, SingularInducingKernelIsFailedPrecondition) {
  const RowMatrix points = testing::NormalPoints(30, 2, 1);
  for (KernelType type : kAllTypes) {
    for (double variance : {1.0, 4.0, 0.25}) {
      SCOPED_TRACE(::testing::Message() << core::KernelTypeName(type) << " s2=" << variance);
      ResidualOptions options = Options(MakeKernel(type, variance, {0.8}), 2, 0, 0.0);
      RowMatrix inducing = testing::NormalPoints(2, 2, 5);
      inducing.row(1) = inducing.row(0);
      options.inducing_points = inducing;
      ExpectStatus(CreateStatus(points, options), absl::StatusCode::kFailedPrecondition,
                   "positive definite");
      // The default jitter repairs it.
      options.jitter = core::kDefaultJitter;
      EXPECT_TRUE(CreateStatus(points, options).ok());
    }
  }
}

// The same singular K(U, U) with s2 = 2: the pivot s2 - (s2 / sqrt(s2))^2 rounds to +4e-16
// instead of 0, and ResidualSpace::Create accepts the matrix because it only asks for pivots
// > 0. Whether a singular kernel matrix is reported must not depend on rounding luck; the test
// of positive definiteness needs a threshold relative to the variance (and m).
TEST(ResidualValidationTest, SingularInducingKernelIsFailedPreconditionForAnyVariance) {
  const RowMatrix points = testing::NormalPoints(30, 2, 1);
  ResidualOptions options = Options(MakeKernel(KernelType::kRbf, 2.0, {0.8}), 2, 0, 0.0);
  RowMatrix inducing = testing::NormalPoints(2, 2, 5);
  inducing.row(1) = inducing.row(0);
  options.inducing_points = inducing;
  ExpectStatus(CreateStatus(points, options), absl::StatusCode::kFailedPrecondition,
               "positive definite");
}

TEST(ResidualValidationTest, FromFactorsRejectsBadShapesAndValues) {
  const int64_t n = 8;
  const KernelSpec kernel = MakeKernel(KernelType::kRbf, 1.0, {1.0});
  const RowMatrix points = testing::NormalPoints(n, 2, 1);
  const RowMatrix v = testing::NormalPoints(n, 3, 2, 0.1);
  const Eigen::VectorXd p = Eigen::VectorXd::Constant(n, 0.5);
  auto status = [&](RowMatrix pts, RowMatrix f, Eigen::VectorXd r) {
    return ResidualSpace::FromFactors(std::move(pts), kernel, std::move(f), std::move(r)).status();
  };
  EXPECT_TRUE(status(points, v, p).ok());
  ExpectStatus(status(points, testing::NormalPoints(n - 1, 3, 2), p),
               absl::StatusCode::kInvalidArgument, "factors");
  ExpectStatus(status(points, testing::NormalPoints(n + 1, 3, 2), p),
               absl::StatusCode::kInvalidArgument, "factors");
  ExpectStatus(status(points, RowMatrix(n, 0), p), absl::StatusCode::kInvalidArgument, "factors");
  RowMatrix v_nan = v;
  v_nan(3, 2) = std::nan("");
  ExpectStatus(status(points, v_nan, p), absl::StatusCode::kInvalidArgument, "factors");
  ExpectStatus(status(points, v, Eigen::VectorXd::Constant(n - 1, 0.5)),
               absl::StatusCode::kInvalidArgument, "residual_variances");
  for (double bad : {0.0, -0.1, std::nan(""), kInf}) {
    Eigen::VectorXd q = p;
    q[5] = bad;
    ExpectStatus(status(points, v, q), absl::StatusCode::kInvalidArgument, "residual_variances");
  }
  RowMatrix points_inf = points;
  points_inf(0, 0) = -kInf;
  ExpectStatus(status(points_inf, v, p), absl::StatusCode::kInvalidArgument, "points");
  ExpectStatus(status(RowMatrix(0, 2), RowMatrix(0, 3), Eigen::VectorXd()),
               absl::StatusCode::kInvalidArgument, "points");
}

}  // namespace
}  // namespace rcknn
