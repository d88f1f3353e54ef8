// The residual correlation distance of a Gaussian process after inducing points
// (docs/design.md section 2), and the MetricSpace that evaluates it.
//
//   V = (L^-1 K(U, X))^T (n x m),  L = chol(K(U, U) + jitter * variance * I)
//   p_i = max(variance - ||V_i||^2, kMinResidualVariance)
//   rho_ij = (k(x_i, x_j) - V_i . V_j) / sqrt(p_i p_j), clipped to [-1, 1]
//   d_ij = sqrt(1 - |rho_ij|)
//
// d is a pseudometric: it satisfies the triangle inequality, and distinct points may be at
// distance 0. Rounding can break the triangle inequality by a few ulps of rho; because
// d = sqrt(1 - |rho|), an error e in rho moves a small distance by up to sqrt(e). Searches
// therefore prune with a slack: kPruneSlack, plus RoundingExcess (search_rule.h, PruneSlack)
// for supplied factors that round beyond the kernel variance's scale.
#ifndef RCKNN_CORE_RESIDUAL_CORRELATION_H_
#define RCKNN_CORE_RESIDUAL_CORRELATION_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "absl/status/statusor.h"
#include "tbb/task_arena.h"
#include "core/array_cache.h"
#include "core/inducing_points.h"
#include "core/kernel.h"
#include "core/metric_space.h"
#include "core/progress.h"

namespace rcknn::core {

inline constexpr double kMinResidualVariance = 1e-9;
inline constexpr double kDefaultJitter = 1e-6;
inline constexpr int64_t kDefaultInducingCount = 512;

// The one definition of the metric. Every path (tree, search, brute force, tests) calls it.
// kernel_value = k(x_i, x_j), v_dot = V_i . V_j, inv_sqrt_p_* = 1 / sqrt(p_*).
// ResidualSquaredDistance is d^2 = 1 - |rho|: the part before the square root, which the
// blocked paths apply to whole rows at once in vector instructions (correctly rounded, so the
// same bits).
inline double ResidualSquaredDistance(double kernel_value, double v_dot, double inv_sqrt_p_i,
                                      double inv_sqrt_p_j) {
  const double rho = (kernel_value - v_dot) * inv_sqrt_p_i * inv_sqrt_p_j;
  return 1.0 - std::min(std::fabs(rho), 1.0);
}
inline double ResidualDistance(double kernel_value, double v_dot, double inv_sqrt_p_i,
                               double inv_sqrt_p_j) {
  return std::sqrt(ResidualSquaredDistance(kernel_value, v_dot, inv_sqrt_p_i, inv_sqrt_p_j));
}

struct ResidualOptions {
  KernelSpec kernel;
  // Inducing points chosen by `inducing_method` (`inducing_count` of them, from
  // `inducing_seed`), unless `inducing_points` (row-major, dimension columns) is given.
  // kUniform draws distinct data points; kKMeansPlusPlus seeds on the scaled coordinates and
  // then runs `lloyd_iterations` Lloyd steps (core/inducing_points.h).
  InducingMethod inducing_method = InducingMethod::kUniform;
  int64_t inducing_count = kDefaultInducingCount;
  uint64_t inducing_seed = 0;
  int lloyd_iterations = kDefaultLloydIterations;
  std::optional<RowMatrix> inducing_points;
  double jitter = kDefaultJitter;
};

class ResidualSpace final : public MetricSpace {
 public:
  // Computes V and p for `points` (n x d, row-major). Runs on `arena` if given.
  // INVALID_ARGUMENT: empty or non-finite points, bad kernel, inducing_count < 1 or > n (or,
  // for k-means++, more than the distinct locations), inducing points of the wrong shape or
  // non-finite, inducing points given together with k-means++, lloyd_iterations < 0, negative
  // or non-finite jitter.
  // FAILED_PRECONDITION: K(U, U) + jitter I is not positive definite.
  static absl::StatusOr<std::unique_ptr<ResidualSpace>> Create(
      RowMatrix points, const ResidualOptions& options, tbb::task_arena* arena = nullptr,
      const ProgressCallback& progress = nullptr);
  // The same over a point set shared with other spaces (a re-parameterised index keeps its
  // source's coordinates instead of a copy). `points` must not be null. With a `layout` (a
  // permutation of the ids; INVALID_ARGUMENT otherwise) the arrays are computed in that storage
  // order (position p holds point layout[p], as after ApplyLayout(layout)), so an index whose
  // tree order is known beforehand (a refitted tree) never moves V. Every row of V has the same
  // bits in any layout: V is computed in fixed blocks of positions, each solved at the full
  // block width (the last one padded), so a row's arithmetic does not depend on where it sits.
  static absl::StatusOr<std::unique_ptr<ResidualSpace>> Create(
      std::shared_ptr<const RowMatrix> points, const ResidualOptions& options,
      tbb::task_arena* arena = nullptr, const ProgressCallback& progress = nullptr,
      absl::Span<const int64_t> layout = {});

  // Uses caller-supplied factors: `v` is n x m, `p` has n positive entries. The kernel is still
  // needed for k(x_i, x_j). Out-of-sample queries are not possible (Prepare fails).
  // The factors need not be consistent with the kernel (|V_i|^2 + p_i = variance for computed
  // ones): d follows the formula with the values given. They are accepted, not refused, because
  // the formula defines a valid pseudometric for any V and p > 0, and factors from another
  // scaling or approximation of the GP are what a caller may well have. The price is in
  // RoundingBound: a dot product rounds at the scale of |V_i| |V_j|, which for computed factors is
  // at most the variance but here may be far above it, so the bound is taken from the largest
  // |V_i| of the data (computed once here). Far-too-large factors then widen the margins of the
  // matrix-product paths (more candidates re-evaluated canonically) and the trees' pruning slack
  // (RoundingExcess: the query's own evaluations and the stored bounds round at that scale too):
  // the search stays exact, at up to a scan's cost where the excess is large, and for factors
  // with |V_i|^2 <= variance nothing changes.
  static absl::StatusOr<std::unique_ptr<ResidualSpace>> FromFactors(RowMatrix points,
                                                                    const KernelSpec& kernel,
                                                                    RowMatrix v,
                                                                    Eigen::VectorXd p);

  int64_t size() const override { return v_.rows(); }
  int dimension() const override { return kernel_.dimension(); }
  int64_t cost_per_distance() const override { return v_.cols() + kernel_.dimension(); }
  int64_t memory_bytes() const override;
  uint64_t Fingerprint() const override;

  PointRows Gather(absl::Span<const int64_t> ids) const override;
  absl::StatusOr<PointRows> Prepare(const double* points, int64_t num) const override;
  void RowsToRange(const PointRows& rows, int64_t first, int64_t num, int64_t begin,
                   int64_t count, double* out) const override;
  void RowsToRows(const PointRows& a, int64_t a0, int64_t na, const PointRows& b, int64_t b0,
                  int64_t nb, double* out) const override;
  using MetricSpace::RowsToRangeWithin;
  using MetricSpace::RowsToRowsWithin;
  void RowsToRangeWithin(const PointRows& rows, int64_t first, int64_t num, int64_t begin,
                         int64_t count, const double* limits, double* out,
                         RowsReady rows_ready) const override;
  void RowsToRowsWithin(const PointRows& a, int64_t a0, int64_t na, const PointRows& b,
                        int64_t b0, int64_t nb, const double* limits, double* out,
                        RowsReady rows_ready) const override;
  void RowsToIdsWithin(const PointRows& rows, int64_t first, int64_t num,
                       absl::Span<const int64_t> ids, const double* limits, double* out,
                       RowsReady rows_ready) const override;
  void RowToIds(const PointRows& rows, int64_t row, absl::Span<const int64_t> ids,
                double* out) const override;
  double RoundingBound(const PointRows& rows, int64_t row) const override;
  double RoundingExcess() const override;

  const Kernel& kernel() const { return kernel_; }
  // n x m, in storage order: the row of point id is position_of(id) (MetricSpace layout).
  Eigen::Map<const RowMatrix> v() const { return {v_.data(), v_.rows(), v_.cols()}; }
  const Eigen::VectorXd& p() const { return p_; }     // n, by id
  const RowMatrix& points() const override { return *points_; }  // n x d, as given, by id
  // The same coordinates as a shared, immutable set.
  const std::shared_ptr<const RowMatrix>& shared_points() const { return points_; }
  // Ids of the inducing points when they are data points (uniform draw, or k-means++ without
  // Lloyd steps), ascending; empty when they were given, moved by Lloyd steps, or factors were
  // supplied.
  const std::vector<int64_t>& inducing_ids() const { return inducing_ids_; }
  bool factors_supplied() const { return !cholesky_.has_value(); }

  ResidualSpace(const ResidualSpace&) = delete;
  ResidualSpace& operator=(const ResidualSpace&) = delete;

 private:
  ResidualSpace(Kernel kernel, std::shared_ptr<const RowMatrix> points);
  void PermuteStorage(absl::Span<const int64_t> from) override;
  void FinishSetup();  // derived arrays from points_, v_ and p_
  // Whether rows[row] and stored point `id` are at distance 0 by definition: the same id, or the
  // same location (exactly) with computed factors or bit-identical supplied ones. Rounding would
  // otherwise leave up to sqrt(ulp / p) between them.
  bool Coincide(const PointRows& rows, int64_t row, int64_t id) const;
  // Distances for one row against stored points (at `positions`, or at positions
  // [begin, begin + count) if null) whose squared scaled distances are in r2 and V dot products
  // in `dots`; writes distances over `dots`.
  void FinishRow(const PointRows& rows, int64_t row, const int64_t* positions_or_null,
                 int64_t begin, int64_t count, double* r2, double* dots) const;

  // points_ and p_ are by id; the arrays the distances read are in storage order (positions).
  Kernel kernel_;
  std::shared_ptr<const RowMatrix> points_;  // immutable; shared with derived spaces
  RowMatrix scaled_;                 // n x d: points / lengthscales
  RowMatrix scaled_by_dim_;          // d x n: the same, one row per dimension
  // n x m, over computed_v_ (a LargeArray: its memory is reused from a freed index's where
  // ArrayCache keeps one) or supplied_v_.
  Eigen::Map<RowMatrix> v_{nullptr, 0, 0};
  LargeArray computed_v_;
  RowMatrix supplied_v_;
  Eigen::VectorXd p_;                // n
  Eigen::VectorXd inv_sqrt_p_;       // n
  // Set by the first PermuteStorage (Fingerprint() of the arrays before they move).
  std::optional<uint64_t> fingerprint_;
  double max_inv_sqrt_p_ = 0.0;
  double max_v_norm_ = 0.0;          // the largest |V_i|, for RoundingBound
  RowMatrix inducing_scaled_;        // m x d (empty with supplied factors)
  std::optional<Eigen::LLT<Eigen::MatrixXd>> cholesky_;
  std::vector<int64_t> inducing_ids_;
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_RESIDUAL_CORRELATION_H_
